// LvmDouble: a TEST DOUBLE of LVM thin provisioning (lvm2's lvs, lvcreate, lvremove, lvchange;
// dmsetup's pool messages; thin-provisioning-tools' thin_delta) and of the block devices its
// LVs appear as. It exists because these machines' kernel has no device-mapper, so the LVM
// backend (agents/host/disks/lvm-thin.ts) cannot run against the real thing here
// (docs/contributing.md#real-things-in-tests; docs/disks.md says what to run on a real host).
//
// It keeps the semantics the backend relies on, with LVM's own messages and exit codes:
// - sizes: `-V` sizes in LVM's units (a bare number is MiB; b k m g t suffixes), rounded up to
//   the VG's extent size (4 MiB) as lvcreate does; `lvs --units b --nosuffix` reports bytes.
// - thin pools: data is allocated in pool blocks (64 KiB, data_block_size 128 sectors) on first
//   write; a snapshot shares its origin's blocks and a write to a shared block allocates a new
//   one (copy-on-write); `data_percent`/`metadata_percent` follow. lvcreate refuses a new thin
//   volume or snapshot once data usage reaches the threshold (100 % unless set) or the free
//   metadata falls below LVM's reserve (the smaller of 4 MiB and a quarter of the metadata),
//   with lvm2's "Cannot create new thin volume, free space in thin pool VG/POOL reached
//   threshold." (exit 5); a write that needs a block when none is free fails with ENOSPC (a
//   pool set to error_if_no_space).
// - snapshots: `lvcreate -s` of a thin LV without a size is a thin snapshot with the origin
//   recorded (lvs `origin`), a new `thin_id`, and activation skip set unless `-kn` (its device
//   then does not exist until `lvchange -ay -K`); a size (`-L`) would make a classic snapshot,
//   which this double refuses to model.
// - missing LVs: `  Failed to find logical volume "VG/LV"` (exit 5) from lvs, lvremove,
//   lvchange and lvcreate's origin; reading a removed or inactive LV's device fails with ENOENT.
// - thin_delta: the differences between two thin devices' mappings (same data block: same;
//   different block: different; mapped on one side only: left_only / right_only), in runs of
//   pool blocks, in thin_delta's XML; with -m it reads the metadata snapshot reserved by
//   `dmsetup message POOL-tpool 0 reserve_metadata_snap` (the mappings as they were then) and
//   fails without one; a second reserve is EBUSY, a release without one EINVAL.
// What it does not model: classic snapshots, pool autoextend, metadata btree sharing (metadata
// use is estimated per device and per mapped block), discards, the 60 s no-space queue.
import type { BlockIo, CommandResult, CommandRunner } from '../../agents/host/disks/io.ts';

const MiB = 1024 * 1024;

interface Pool {
  vg: string;
  name: string;
  dataBytes: number;
  metaBytes: number;
  blockBytes: number;
  thresholdPercent: number;
  blocks: Map<number, { data: Buffer; refs: number }>;
  nextBlock: number;
  nextThinId: number;
  metaSnap: Map<number, Map<number, number>> | null;
}

interface ThinLv {
  vg: string;
  name: string;
  pool: string;
  sizeBytes: number;
  thinId: number;
  origin: string;
  active: boolean;
  skip: boolean;
  tags: string[];
  map: Map<number, number>;
}

const fail = (code: number, stderr: string): CommandResult => ({ code, stdout: '', stderr });
const notFound = (vglv: string) => fail(5, `  Failed to find logical volume "${vglv}"\n`);
const dm = (vg: string, lv: string) => `${vg.replace(/-/g, '--')}-${lv.replace(/-/g, '--')}`;
const pct = (n: number) => n.toFixed(2);

export class LvmDouble {
  readonly extentBytes = 4 * MiB;
  readonly pools = new Map<string, Pool>();
  readonly lvs = new Map<string, ThinLv>();
  /** Every argv run, in order. */
  readonly commands: string[][] = [];
  /** Fail the next command whose argv[0] is the key with this result (once). */
  readonly failNext = new Map<string, CommandResult>();
  /** Called before each command runs (a test removes an LV under the backend from here). */
  beforeCommand: ((argv: readonly string[]) => void) | null = null;

  addThinPool(vg: string, name: string, opts: { dataBytes: number; metaBytes?: number; blockBytes?: number; thresholdPercent?: number }): void {
    this.pools.set(`${vg}/${name}`, {
      vg, name, dataBytes: opts.dataBytes, metaBytes: opts.metaBytes ?? 4 * MiB, blockBytes: opts.blockBytes ?? 64 * 1024,
      thresholdPercent: opts.thresholdPercent ?? 100, blocks: new Map(), nextBlock: 0, nextThinId: 1, metaSnap: null,
    });
  }

  /** A thin LV as an operator would have made it (lvcreate -V SIZE -T VG/POOL -n NAME). */
  addThinLv(vg: string, pool: string, name: string, sizeBytes: number): void {
    const r = this.lvcreate(['-V', `${sizeBytes}b`, '-T', `${vg}/${pool}`, '-n', name]);
    if (r.code !== 0) throw new Error(r.stderr);
  }

  usedBlocks(vg: string, pool: string): number {
    return this.pools.get(`${vg}/${pool}`)!.blocks.size;
  }

  metadataSnapHeld(vg: string, pool: string): boolean {
    return this.pools.get(`${vg}/${pool}`)!.metaSnap !== null;
  }

  // ---- commands --------------------------------------------------------------------------

  readonly runner: CommandRunner = async (argv) => {
    this.commands.push([...argv]);
    this.beforeCommand?.(argv);
    const injected = this.failNext.get(argv[0]!);
    if (injected) {
      this.failNext.delete(argv[0]!);
      return injected;
    }
    const [cmd, ...args] = argv;
    switch (cmd) {
      case 'lvs': return this.lvsCmd(args);
      case 'lvcreate': return this.lvcreate(args);
      case 'lvremove': return this.lvremove(args);
      case 'lvchange': return this.lvchange(args);
      case 'dmsetup': return this.dmsetup(args);
      case 'thin_delta': return this.thinDelta(args);
      default: return fail(127, `${cmd}: command not found\n`);
    }
  };

  private lvsCmd(args: string[]): CommandResult {
    let fields: string[] = ['lv_name', 'vg_name', 'lv_attr', 'lv_size', 'pool_lv', 'origin', 'data_percent', 'metadata_percent'];
    const names: string[] = [];
    let json = false;
    let bytes = false;
    for (let i = 0; i < args.length; i++) {
      const a = args[i]!;
      if (a === '--reportformat') json = args[++i] === 'json';
      else if (a === '--units') bytes = args[++i] === 'b';
      else if (a === '--nosuffix') continue;
      else if (a === '-o') fields = args[++i]!.split(',');
      else if (a.startsWith('-')) return fail(3, `lvs: unrecognized option '${a}'\n`);
      else names.push(a);
    }
    if (!json || !bytes) return fail(3, 'double: only --reportformat json --units b is modelled\n');
    const rows: Record<string, string>[] = [];
    let stderr = '';
    // A bare VG name lists every LV of it, as lvs does.
    const expanded = names.flatMap((n) => (n.includes('/') ? [n] : [...this.pools.keys(), ...this.lvs.keys()].filter((k) => k.startsWith(`${n}/`))));
    for (const n of expanded) {
      const row = this.row(n);
      if (!row) stderr += `  Failed to find logical volume "${n}"\n`;
      else {
        for (const f of fields) if (!(f in row)) return fail(5, `  Unrecognised field: ${f}\n`);
        rows.push(Object.fromEntries(fields.map((f) => [f, row[f]!])));
      }
    }
    return { code: stderr ? 5 : 0, stdout: JSON.stringify({ report: [{ lv: rows }] }, null, 2), stderr };
  }

  private row(vglv: string): Record<string, string> | null {
    const pool = this.pools.get(vglv);
    if (pool) {
      return {
        lv_name: pool.name, vg_name: pool.vg, lv_attr: 'twi-aotz--', lv_size: String(pool.dataBytes), pool_lv: '', origin: '', thin_id: '', lv_tags: '',
        data_percent: pct((100 * pool.blocks.size * pool.blockBytes) / pool.dataBytes), metadata_percent: pct((100 * this.metaUsed(pool)) / pool.metaBytes),
      };
    }
    const lv = this.lvs.get(vglv);
    if (!lv) return null;
    const p = this.pools.get(`${lv.vg}/${lv.pool}`)!;
    return {
      lv_name: lv.name, vg_name: lv.vg, lv_attr: `Vwi-${lv.active ? 'a' : '-'}-tz-${lv.skip ? 'k' : '-'}`, lv_size: String(lv.sizeBytes), pool_lv: lv.pool,
      origin: this.lvs.has(`${lv.vg}/${lv.origin}`) ? lv.origin : '', thin_id: String(lv.thinId), lv_tags: lv.tags.join(','),
      data_percent: pct((100 * lv.map.size * p.blockBytes) / lv.sizeBytes), metadata_percent: '',
    };
  }

  private metaUsed(p: Pool): number {
    const devices = [...this.lvs.values()].filter((l) => l.vg === p.vg && l.pool === p.name);
    return 4096 * (devices.length + 1) + 16 * devices.reduce((n, l) => n + l.map.size, 0);
  }

  /** lvm2's check before a new thin volume or snapshot. */
  private poolRefuses(p: Pool): boolean {
    const dataPct = (100 * p.blocks.size * p.blockBytes) / p.dataBytes;
    const reserve = Math.min(4 * MiB, p.metaBytes / 4);
    return dataPct >= p.thresholdPercent || p.metaBytes - this.metaUsed(p) < reserve;
  }

  private lvcreate(args: string[]): CommandResult {
    let snapshot = false;
    let skip: boolean | null = null;
    let name = '';
    let vsize: string | null = null;
    let thinpool = '';
    let lsize: string | null = null;
    const pos: string[] = [];
    for (let i = 0; i < args.length; i++) {
      const a = args[i]!;
      if (a === '-s' || a === '--snapshot') snapshot = true;
      else if (a === '-kn' || a === '--setactivationskip=n') skip = false;
      else if (a === '-ky') skip = true;
      else if (a === '-n' || a === '--name') name = args[++i]!;
      else if (a === '-V' || a === '--virtualsize') vsize = args[++i]!;
      else if (a === '-T' || a === '--thinpool') thinpool = args[++i]!;
      else if (a === '-L' || a === '--size') lsize = args[++i]!;
      else if (a.startsWith('-')) return fail(3, `lvcreate: unrecognized option '${a}'\n`);
      else pos.push(a);
    }
    if (!name) return fail(3, '  double: the backend always names its LVs (-n)\n');
    if (snapshot) {
      if (lsize !== null) return fail(3, '  double: classic (non-thin) snapshots are not modelled\n');
      const originKey = pos[0] ?? '';
      const origin = this.lvs.get(originKey);
      if (!origin) return notFound(originKey);
      if (this.lvs.has(`${origin.vg}/${name}`)) return fail(5, `  Logical Volume "${name}" already exists in volume group "${origin.vg}"\n`);
      const p = this.pools.get(`${origin.vg}/${origin.pool}`)!;
      if (this.poolRefuses(p)) return fail(5, `  Cannot create new thin volume, free space in thin pool ${p.vg}/${p.name} reached threshold.\n`);
      for (const pb of origin.map.values()) p.blocks.get(pb)!.refs++;
      const s: ThinLv = { vg: origin.vg, name, pool: origin.pool, sizeBytes: origin.sizeBytes, thinId: p.nextThinId++, origin: origin.name, active: skip === false, skip: skip !== false, tags: [], map: new Map(origin.map) };
      this.lvs.set(`${s.vg}/${name}`, s);
      return { code: 0, stdout: `  Logical volume "${name}" created.\n`, stderr: '' };
    }
    if (vsize === null || !thinpool) return fail(3, '  double: only thin volumes (-V SIZE -T VG/POOL) and thin snapshots are modelled\n');
    const p = this.pools.get(thinpool);
    if (!p) return fail(5, `  Failed to find logical volume "${thinpool}"\n`);
    if (this.lvs.has(`${p.vg}/${name}`)) return fail(5, `  Logical Volume "${name}" already exists in volume group "${p.vg}"\n`);
    const want = parseLvmSize(vsize);
    if (want === null || want <= 0) return fail(3, `  Invalid argument for --virtualsize: ${vsize}\n`);
    if (this.poolRefuses(p)) return fail(5, `  Cannot create new thin volume, free space in thin pool ${p.vg}/${p.name} reached threshold.\n`);
    const size = Math.ceil(want / this.extentBytes) * this.extentBytes;
    const lv: ThinLv = { vg: p.vg, name, pool: p.name, sizeBytes: size, thinId: p.nextThinId++, origin: '', active: true, skip: false, tags: [], map: new Map() };
    this.lvs.set(`${p.vg}/${name}`, lv);
    const note = size !== want ? `  Rounding up size to full physical extent ${(size / MiB).toFixed(2)} MiB\n` : '';
    return { code: 0, stdout: `  Logical volume "${name}" created.\n`, stderr: note };
  }

  private lvremove(args: string[]): CommandResult {
    const names = args.filter((a) => !a.startsWith('-'));
    for (const n of names) {
      const lv = this.lvs.get(n);
      if (!lv) return notFound(n);
      this.drop(lv);
    }
    return { code: 0, stdout: names.map((n) => `  Logical volume "${n.split('/')[1]}" successfully removed.\n`).join(''), stderr: '' };
  }

  /** Remove an LV under the backend, as an operator's lvremove would. */
  removeLv(vglv: string): void {
    const r = this.lvremove(['-f', vglv]);
    if (r.code !== 0) throw new Error(r.stderr);
  }

  private drop(lv: ThinLv): void {
    const p = this.pools.get(`${lv.vg}/${lv.pool}`)!;
    for (const pb of lv.map.values()) {
      const b = p.blocks.get(pb)!;
      if (--b.refs === 0) p.blocks.delete(pb);
    }
    this.lvs.delete(`${lv.vg}/${lv.name}`);
  }

  private lvchange(args: string[]): CommandResult {
    const target = args[args.length - 1]!;
    const lv = this.lvs.get(target);
    if (!lv) return notFound(target);
    let ignoreSkip = false;
    for (const a of args) if (a === '-K' || a === '--ignoreactivationskip') ignoreSkip = true;
    for (let i = 0; i < args.length - 1; i++) {
      const a = args[i]!;
      if (a === '--addtag') {
        const t = args[++i]!;
        if (!/^[A-Za-z0-9_+.\-/=!:&#]{1,1024}$/.test(t)) return fail(3, `  Invalid argument for --addtag: ${t}\n`);
        if (!lv.tags.includes(t)) lv.tags.push(t);
      } else if (a === '--deltag') {
        const t = args[++i]!;
        lv.tags = lv.tags.filter((x) => x !== t);
      } else if (a === '-ay') {
        if (lv.skip && !ignoreSkip) return { code: 0, stdout: '', stderr: '' }; // lvm2 silently skips it
        lv.active = true;
      } else if (a === '-an') lv.active = false;
      else if (a === '-K' || a === '--ignoreactivationskip') continue;
      else return fail(3, `lvchange: unrecognized option '${a}'\n`);
    }
    return { code: 0, stdout: `  Logical volume ${target} changed.\n`, stderr: '' };
  }

  private poolByDevice(dev: string, suffix: string): Pool | undefined {
    for (const p of this.pools.values()) if (dev === `/dev/mapper/${dm(p.vg, p.name)}${suffix}` || dev === `/dev/mapper/${dm(p.vg, `${p.name}${suffix}`)}`) return p;
    return undefined;
  }

  private dmsetup(args: string[]): CommandResult {
    if (args[0] !== 'message' || args.length !== 4) return fail(1, '  double: only `dmsetup message DEV 0 MSG` is modelled\n');
    const [, dev, sector, msg] = args as [string, string, string, string];
    const p = this.poolByDevice(dev, '-tpool');
    if (!p) return fail(1, 'Device does not exist.\nCommand failed.\n');
    const name = dev.replace('/dev/mapper/', '');
    if (sector !== '0') return fail(1, `device-mapper: message ioctl on ${name}  failed: Invalid argument\nCommand failed.\n`);
    if (msg === 'reserve_metadata_snap') {
      if (p.metaSnap) return fail(1, `device-mapper: message ioctl on ${name}  failed: Device or resource busy\nCommand failed.\n`);
      p.metaSnap = new Map([...this.lvs.values()].filter((l) => l.vg === p.vg && l.pool === p.name).map((l) => [l.thinId, new Map(l.map)]));
      return { code: 0, stdout: '', stderr: '' };
    }
    if (msg === 'release_metadata_snap') {
      if (!p.metaSnap) return fail(1, `device-mapper: message ioctl on ${name}  failed: Invalid argument\nCommand failed.\n`);
      p.metaSnap = null;
      return { code: 0, stdout: '', stderr: '' };
    }
    return fail(1, `device-mapper: message ioctl on ${name}  failed: Invalid argument\nCommand failed.\n`);
  }

  private thinDelta(args: string[]): CommandResult {
    let useSnap = false;
    let verbose = false;
    let a1: number | null = null;
    let a2: number | null = null;
    let dev = '';
    for (let i = 0; i < args.length; i++) {
      const a = args[i]!;
      if (a === '-m' || a === '--metadata-snap') useSnap = true;
      else if (a === '--verbose') verbose = true;
      else if (a === '--snap1' || a === '--thin1') a1 = Number(args[++i]);
      else if (a === '--snap2' || a === '--thin2') a2 = Number(args[++i]);
      else if (a.startsWith('-')) return fail(2, `error: unexpected argument '${a}' found\n`);
      else dev = a;
    }
    if (a1 === null || a2 === null || !dev) return fail(2, 'error: the following required arguments were not provided\n');
    const p = this.poolByDevice(dev, '_tmeta');
    if (!p) return fail(1, `${dev}: No such file or directory\n`);
    let maps: Map<number, Map<number, number>>;
    if (useSnap) {
      if (!p.metaSnap) return fail(1, 'no current metadata snap\n');
      maps = p.metaSnap;
    } else {
      maps = new Map([...this.lvs.values()].filter((l) => l.vg === p.vg && l.pool === p.name).map((l) => [l.thinId, l.map]));
    }
    const left = maps.get(a1);
    const right = maps.get(a2);
    if (!left) return fail(1, `Unable to find mapping tree for the thin device ${a1}\n`);
    if (!right) return fail(1, `Unable to find mapping tree for the thin device ${a2}\n`);
    const vblocks = [...new Set([...left.keys(), ...right.keys()])].sort((x, y) => x - y);
    const runs: { kind: string; begin: number; length: number }[] = [];
    for (const vb of vblocks) {
      const l = left.get(vb);
      const r = right.get(vb);
      const kind = l === undefined ? 'right_only' : r === undefined ? 'left_only' : l === r ? 'same' : 'different';
      const last = runs[runs.length - 1];
      if (last && last.kind === kind && last.begin + last.length === vb) last.length++;
      else runs.push({ kind, begin: vb, length: 1 });
    }
    const sb = `<superblock uuid="" time="1" transaction="${p.nextThinId}" version="2" data_block_size="${p.blockBytes / 512}" nr_data_blocks="${p.dataBytes / p.blockBytes}">`;
    const lines = [sb, `  <diff left="${a1}" right="${a2}">`];
    if (verbose) {
      let open = '';
      for (const r of runs) {
        if (r.kind !== open) {
          if (open) lines.push(`    </${open}>`);
          lines.push(`    <${r.kind}>`);
          open = r.kind;
        }
        lines.push(`      <range begin="${r.begin}" data_begin="0" length="${r.length}"/>`);
      }
      if (open) lines.push(`    </${open}>`);
    } else {
      for (const r of runs) lines.push(`    <${r.kind} begin="${r.begin}" length="${r.length}"/>`);
    }
    lines.push('  </diff>', '</superblock>');
    return { code: 0, stdout: lines.join('\n') + '\n', stderr: '' };
  }

  // ---- block devices ---------------------------------------------------------------------

  private device(path: string): ThinLv {
    const m = path.match(/^\/dev\/([^/]+)\/([^/]+)$/);
    const lv = m ? this.lvs.get(`${m[1]}/${m[2]}`) : undefined;
    if (!lv || !lv.active) throw Object.assign(new Error(`ENOENT: no such file or directory, open '${path}'`), { code: 'ENOENT' });
    return lv;
  }

  readonly io: BlockIo = {
    read: async (path, offset, length) => {
      const lv = this.device(path);
      const p = this.pools.get(`${lv.vg}/${lv.pool}`)!;
      const end = Math.min(lv.sizeBytes, offset + length);
      const out = Buffer.alloc(Math.max(0, end - offset));
      for (let at = offset; at < end;) {
        const vb = Math.floor(at / p.blockBytes);
        const inBlock = at - vb * p.blockBytes;
        const n = Math.min(p.blockBytes - inBlock, end - at);
        const pb = lv.map.get(vb);
        if (pb !== undefined) p.blocks.get(pb)!.data.copy(out, at - offset, inBlock, inBlock + n);
        at += n;
      }
      return out;
    },
    write: async (path, offset, data) => {
      const lv = this.device(path);
      const p = this.pools.get(`${lv.vg}/${lv.pool}`)!;
      if (offset + data.length > lv.sizeBytes) throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
      for (let at = offset; at < offset + data.length;) {
        const vb = Math.floor(at / p.blockBytes);
        const inBlock = at - vb * p.blockBytes;
        const n = Math.min(p.blockBytes - inBlock, offset + data.length - at);
        let pb = lv.map.get(vb);
        let block = pb === undefined ? undefined : p.blocks.get(pb)!;
        if (!block || block.refs > 1) {
          if (p.blocks.size * p.blockBytes + p.blockBytes > p.dataBytes) throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
          const fresh = { data: block ? Buffer.from(block.data) : Buffer.alloc(p.blockBytes), refs: 1 };
          if (block) block.refs--;
          pb = p.nextBlock++;
          p.blocks.set(pb, fresh);
          lv.map.set(vb, pb);
          block = fresh;
        }
        data.copy(block.data, inBlock, at - offset, at - offset + n);
        at += n;
      }
    },
  };
}

/** LVM's size argument: a bare number is MiB; suffixes b, s (512), k, m, g, t (powers of 1024). */
export function parseLvmSize(s: string): number | null {
  const m = s.match(/^(\d+(?:\.\d+)?)([bBsSkKmMgGtT]?)$/);
  if (!m) return null;
  const unit = { b: 1, s: 512, k: 1024, m: MiB, g: 1024 * MiB, t: 1024 * 1024 * MiB, '': MiB }[m[2]!.toLowerCase()]!;
  return Math.ceil(Number(m[1]) * unit);
}
