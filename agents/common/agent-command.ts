// What `vmtc agent` and `vmtc tunnel` share: the options that reach the controller link, and
// serving an agent over a driver it owns until SIGINT/SIGTERM. Each command keeps its own driver
// options, --help wording and ready line; this holds only what is the same in both.
import type { OptionSpec } from '../../src/common/command.ts';
import { runUntilSignal } from '../../src/common/command.ts';
import type { AgentLink } from './agent-link.ts';

/** Exit code when the controller refused the certificate (revoked/unknown): permanent, so a supervisor shows it. */
export const EXIT_REFUSED = 3;

/**
 * The link options, in --help order: controller, enroll, ca-fingerprint, data. The help of
 * --enroll and --data differs by agent kind, so the caller words them.
 */
export function linkOptions(help: { enroll: string; data: string }): Record<string, OptionSpec> {
  return {
    controller: { type: 'string', arg: 'URL', help: 'base URL of the controller REST API (needed to enrol)' },
    enroll: { type: 'string', arg: 'TOKEN', help: help.enroll },
    'ca-fingerprint': { type: 'string', arg: 'SHA256', help: 'expected fingerprint of the controller CA, checked at enrolment' },
    data: { type: 'string', arg: 'DIR', required: true, help: help.data },
  };
}

/** --log-level, listed last by both commands. */
export const LOG_LEVEL_OPTION: Record<string, OptionSpec> = {
  'log-level': { type: 'string', arg: 'LEVEL', default: 'info', help: 'pino log level' },
};

/** The link settings given on the command line (only those given). */
export function linkArgs(o: Record<string, unknown>): { controllerUrl?: string; enrollToken?: string; caFingerprint?: string } {
  return {
    ...(o.controller ? { controllerUrl: o.controller as string } : {}),
    ...(o.enroll ? { enrollToken: o.enroll as string } : {}),
    ...(o['ca-fingerprint'] ? { caFingerprint: o['ca-fingerprint'] as string } : {}),
  };
}

export interface ServedAgent {
  link: AgentLink;
  close(): Promise<void>;
}

/**
 * Start an agent over `driver` and serve until SIGINT/SIGTERM; then close the agent and the
 * driver. The driver is closed too if the agent fails to start (the error is rethrown).
 * Resolves with runUntilSignal's code (0, or 1 if closing failed), or EXIT_REFUSED when the
 * controller refused the certificate. `onFirstConnection` runs once, at the first connection.
 */
export async function serveAgent<A extends ServedAgent>(
  driver: { close(): Promise<void> },
  start: () => Promise<A>,
  onFirstConnection?: (agent: A) => void,
): Promise<number> {
  let agent: A;
  try {
    agent = await start();
  } catch (e) {
    await driver.close();
    throw e;
  }
  let refused = false;
  const done = runUntilSignal(async () => {
    await agent.close();
    await driver.close();
  });
  agent.link.once('refused', () => {
    refused = true;
    process.kill(process.pid, 'SIGTERM');
  });
  if (onFirstConnection) {
    // The link may already be up by now (it connects while the agent finishes starting), so look
    // before listening; listening alone missed the event once (a CI failure).
    if (agent.link.connected) onFirstConnection(agent);
    else agent.link.once('connected', () => onFirstConnection(agent));
  }
  const code = await done;
  return refused ? EXIT_REFUSED : code;
}
