// The effect registry: every effect a state of the machine names (STATE_DEFS[...].onEnter), by
// name. Each path keeps its effects in a file of its own; the type makes a missing one a
// compile error.
import type { Effect } from '../machine.ts';
import type { EffectFn } from './context.ts';
import { LIVE_EFFECTS } from './effects-live.ts';
import { COLD_EFFECTS } from './effects-cold.ts';
import { COMMIT_EFFECTS } from './effects-commit.ts';
import { ROLLBACK_EFFECTS } from './effects-rollback.ts';

export const EFFECTS: Record<Effect, EffectFn> = { ...LIVE_EFFECTS, ...COLD_EFFECTS, ...COMMIT_EFFECTS, ...ROLLBACK_EFFECTS };
