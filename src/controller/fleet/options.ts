// The controller's fleet options (docs/fleet.md "Lightpaths", "Bookings"), as `vmtc controller
// --fleet FILE` reads them: checked field by field, a bad one is VMTC_CONFIG_INVALID naming it.
import { commonError } from '../../common/errors.ts';
import type { SiteLink } from './placement.ts';
import type { BookingTiming } from './bookings.ts';

export interface FleetOptions {
  /** The lightpaths between sites, for the network weigher and the evacuation plan (without them
   *  every pair of sites counts 1 Gbit/s). */
  links?: SiteLink[];
  /** How the plan's time line is booked (bookings.ts bookingWindow). */
  booking?: Partial<BookingTiming>;
}

const bad = (field: string, value: unknown, reason: string) => commonError('VMTC_CONFIG_INVALID', { field, value, reason }, { message: `${field}: ${reason}` });
const isName = (v: unknown): v is string => typeof v === 'string' && v.length > 0 && v.length <= 128;
const isNum = (v: unknown, min: number): v is number => typeof v === 'number' && Number.isFinite(v) && v >= min;

export function parseFleetOptions(v: unknown, field = 'fleet'): FleetOptions {
  if (!v || typeof v !== 'object' || Array.isArray(v)) throw bad(field, v, 'not a JSON object');
  const o = v as Record<string, unknown>;
  for (const k of Object.keys(o)) if (k !== 'links' && k !== 'booking') throw bad(`${field}.${k}`, o[k], 'unknown field (links, booking)');
  const out: FleetOptions = {};
  if (o.links !== undefined) {
    if (!Array.isArray(o.links)) throw bad(`${field}.links`, o.links, 'not an array');
    out.links = o.links.map((l: unknown, i) => {
      const f = `${field}.links[${i}]`;
      if (!l || typeof l !== 'object' || Array.isArray(l)) throw bad(f, l, 'not an object');
      const x = l as Record<string, unknown>;
      for (const k of Object.keys(x)) if (!['id', 'a', 'b', 'mbps', 'available', 'distance'].includes(k)) throw bad(`${f}.${k}`, x[k], 'unknown field (id, a, b, mbps, available, distance)');
      if (!isName(x.a)) throw bad(`${f}.a`, x.a, 'a site name is required');
      if (!isName(x.b)) throw bad(`${f}.b`, x.b, 'a site name is required');
      if (x.a === x.b) throw bad(`${f}.b`, x.b, 'a lightpath joins two different sites');
      if (!isNum(x.mbps, 1)) throw bad(`${f}.mbps`, x.mbps, 'a bandwidth in Mbit/s ≥ 1 is required');
      if (x.id !== undefined && !isName(x.id)) throw bad(`${f}.id`, x.id, 'a name of 1 to 128 characters');
      if (x.available !== undefined && typeof x.available !== 'boolean') throw bad(`${f}.available`, x.available, 'true or false');
      if (x.distance !== undefined && !isNum(x.distance, 0)) throw bad(`${f}.distance`, x.distance, 'a number ≥ 0');
      return { a: x.a, b: x.b, mbps: x.mbps, ...(x.id !== undefined ? { id: x.id as string } : {}), ...(x.available !== undefined ? { available: x.available as boolean } : {}), ...(x.distance !== undefined ? { distance: x.distance as number } : {}) };
    });
  }
  if (o.booking !== undefined) {
    const b = o.booking as Record<string, unknown>;
    if (!b || typeof b !== 'object' || Array.isArray(b)) throw bad(`${field}.booking`, o.booking, 'not an object');
    for (const k of Object.keys(b)) if (k !== 'stretch' && k !== 'slackS') throw bad(`${field}.booking.${k}`, b[k], 'unknown field (stretch, slackS)');
    if (b.stretch !== undefined && !isNum(b.stretch, 1)) throw bad(`${field}.booking.stretch`, b.stretch, 'a number ≥ 1');
    if (b.slackS !== undefined && !isNum(b.slackS, 0)) throw bad(`${field}.booking.slackS`, b.slackS, 'seconds ≥ 0');
    out.booking = { ...(b.stretch !== undefined ? { stretch: b.stretch as number } : {}), ...(b.slackS !== undefined ? { slackS: b.slackS as number } : {}) };
  }
  return out;
}
