// Codes of the broker's network element drivers (the Linux driver, and the lab's lightpath
// driver built on it). A driver's failure reaches the caller of provision through the broker,
// which records it in the reservation's dataPlane.error; listed in docs/broker.md "Drivers".
import { errorFactory, type Catalogue } from '../../common/errors.ts';

export const DRIVER_ERRORS = {
  VMTC_LIGHTPATH_BAD_SETTINGS: { status: 400, message: 'a lightpath end node lacks the settings the driver needs' },
  VMTC_LIGHTPATH_PROVISION_FAILED: { status: 502, message: 'the lightpath could not be brought up; nothing was left behind' },
  VMTC_LIGHTPATH_CONFLICT: { status: 409, message: 'another lightpath already joins these two ends' },
} as const satisfies Catalogue;

export const driverError = errorFactory(DRIVER_ERRORS);
