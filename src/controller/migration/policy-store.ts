// The VM groups' default policies (PUT /v1/policies/:group, ../policy-routes.ts), in the
// controller's SQLite file (tables policy_groups and policy_group_vms, created by store.ts's
// migration list). A VM belongs to at most one group; the group named `default` applies to every
// VM in none.
import type { Db } from '../../common/db.ts';
import type { MigrationPolicy } from './policy.ts';

export const DEFAULT_GROUP = 'default';

export interface PolicyGroup {
  group: string;
  policy: MigrationPolicy;
  vmIds: string[];
  updatedAt: number;
}

function parse(r: Record<string, unknown>, vmIds: string[]): PolicyGroup {
  return { group: r.name as string, policy: JSON.parse(r.policy as string) as MigrationPolicy, vmIds, updatedAt: r.updated_at as number };
}

export class PolicyStore {
  constructor(private readonly db: Db) {}

  private members(group: string): string[] {
    return (this.db.prepare('SELECT vm_id FROM policy_group_vms WHERE name = ? ORDER BY vm_id').all(group) as { vm_id: string }[]).map((r) => r.vm_id);
  }

  /** Create or replace a group: its policy and its VMs (a VM listed moves here from its old group). */
  put(group: string, policy: MigrationPolicy, vmIds: string[], at: number): PolicyGroup {
    this.db.transaction(() => {
      this.db.prepare('INSERT INTO policy_groups (name, policy, updated_at) VALUES (?, ?, ?) ON CONFLICT(name) DO UPDATE SET policy = excluded.policy, updated_at = excluded.updated_at').run(group, JSON.stringify(policy), at);
      this.db.prepare('DELETE FROM policy_group_vms WHERE name = ?').run(group);
      const add = this.db.prepare('INSERT INTO policy_group_vms (vm_id, name) VALUES (?, ?) ON CONFLICT(vm_id) DO UPDATE SET name = excluded.name');
      for (const vm of vmIds) add.run(vm, group);
    })();
    return this.get(group)!;
  }

  get(group: string): PolicyGroup | undefined {
    const r = this.db.prepare('SELECT name, policy, updated_at FROM policy_groups WHERE name = ?').get(group) as Record<string, unknown> | undefined;
    return r ? parse(r, this.members(group)) : undefined;
  }

  list(): PolicyGroup[] {
    return (this.db.prepare('SELECT name, policy, updated_at FROM policy_groups ORDER BY name').all() as Record<string, unknown>[]).map((r) => parse(r, this.members(r.name as string)));
  }

  /** Whether it existed. Its VMs fall back to the default group. */
  delete(group: string): boolean {
    return this.db.transaction(() => {
      this.db.prepare('DELETE FROM policy_group_vms WHERE name = ?').run(group);
      return this.db.prepare('DELETE FROM policy_groups WHERE name = ?').run(group).changes > 0;
    })();
  }

  /** The group whose policy applies to a VM: its own, else `default` if there is one. */
  forVm(vmId: string): PolicyGroup | undefined {
    const r = this.db.prepare('SELECT name FROM policy_group_vms WHERE vm_id = ?').get(vmId) as { name: string } | undefined;
    return (r && this.get(r.name)) ?? this.get(DEFAULT_GROUP);
  }
}
