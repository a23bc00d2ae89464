// A mistake in the command line or its environment (a flag, a variable, the config file): exit
// code 2, printed as the common parser prints its refusals (src/common/command.ts), with the
// same code, VMTC_CONFIG_INVALID, so a script can tell it from an API error.
import { VmtcError } from '../../common/errors.ts';

export class UsageError extends VmtcError {
  constructor(message: string, details?: Record<string, unknown>) {
    super('VMTC_CONFIG_INVALID', 400, message, details);
    this.name = 'UsageError';
  }
}
