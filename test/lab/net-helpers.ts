// Helpers shared by the lab's network tests (not a test file itself).
import { spawn } from 'node:child_process';
import { netnsExec } from '../../lab/net.ts';

/**
 * Send `bytes` over TCP from namespace `fromNs` to a listener on `toIp`:5001 in namespace `toNs`
 * and return how many bytes the listener counted. With VXLAN tx checksum offload left on this
 * hangs while ping works (docs/design.md#lab-facts, VXLAN transmit checksum offload), which is
 * why the lightpath tests move real TCP data.
 */
export async function tcpTransfer(fromNs: string, toNs: string, toIp: string, bytes: number): Promise<number> {
  const recvJs = `const s=require('net').createServer(c=>{let n=0;c.on('data',d=>n+=d.length);c.on('end',()=>{console.log('got '+n);s.close()})});s.listen(5001,'${toIp}',()=>console.log('ready'))`;
  const sendJs = `const c=require('net').connect(5001,'${toIp}',()=>{c.end(Buffer.alloc(${bytes},7))});c.on('close',()=>process.exit(0))`;
  const recv = spawn('ip', ['netns', 'exec', toNs, process.execPath, '-e', recvJs], { stdio: ['ignore', 'pipe', 'inherit'] });
  try {
    let out = '';
    await new Promise<void>((res, rej) => {
      recv.stdout.on('data', (d) => { out += String(d); if (out.includes('ready')) res(); });
      recv.on('exit', () => rej(new Error('receiver exited early')));
    });
    await netnsExec(fromNs, [process.execPath, '-e', sendJs], { timeoutMs: 30_000 });
    await new Promise<void>((res) => { if (/got \d+/.test(out)) res(); else recv.on('exit', () => res()); });
    const m = /got (\d+)/.exec(out);
    return m ? Number(m[1]) : 0;
  } finally {
    recv.kill('SIGKILL');
  }
}
