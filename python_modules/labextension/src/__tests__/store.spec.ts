import { ApiError } from '../errors';
import { ClientLike, SnapshotStore } from '../store';
import type { ISnapshot } from '../types';
import { snap } from './fixtures';

const KID = 'k1';

/** An in-memory Jusnap for one kernel. */
class FakeClient implements ClientLike {
  list: ISnapshot[] = [];
  auto = { enabled: true, cooldown: 5 };
  calls: string[] = [];
  fail: ApiError | null = null;
  /** The kernel is a fork of this snapshot (null: not a fork). */
  parentSnapshot: string | null = null;
  /** Snapshots of other kernels the user can read (a fork's parent). */
  others: ISnapshot[] = [];
  private n = 0;
  private gate: Promise<void> | null = null;
  private open: (() => void) | null = null;

  hold(): void {
    this.gate = new Promise(resolve => (this.open = resolve));
  }

  release(): void {
    this.open?.();
    this.gate = null;
  }

  private async step(name: string): Promise<void> {
    this.calls.push(name);
    if (this.gate) {
      await this.gate;
    }
    if (this.fail) {
      throw this.fail;
    }
  }

  async kernel(id: string) {
    await this.step('kernel');
    return {
      id,
      status: 'running' as const,
      pid: 1,
      notebook_path: 'a.ipynb',
      execution_count: 1,
      execution_state: 'idle',
      auto: { ...this.auto },
      parent_snapshot_id: this.parentSnapshot
    };
  }
  async snapshots() {
    await this.step('snapshots');
    return [...this.list];
  }
  async snapshot(id: string) {
    await this.step('snapshot');
    const found = [...this.list, ...this.others].find(s => s.id === id);
    if (!found) {
      throw new ApiError(404, 'snapshot_not_found', 'no such snapshot');
    }
    return found;
  }
  async create(_: string, label?: string | null) {
    await this.step('create');
    const s = snap(`s${++this.n}`, { label: label ?? null, created_at: 1000 + this.n });
    this.list.push(s);
    return { status: 'created' as const, snapshot: s };
  }
  async clear() {
    await this.step('clear');
    const deleted = this.list.length;
    this.list = [];
    return { deleted };
  }
  async setAuto(_: string, change: { enabled?: boolean }) {
    await this.step('setAuto');
    this.auto = { ...this.auto, ...change };
    return { ...this.auto };
  }
  async relabel(id: string, label: string | null) {
    await this.step('relabel');
    const s = this.list.find(x => x.id === id)!;
    s.label = label;
    return { ...s };
  }
  async remove(id: string) {
    await this.step('remove');
    this.list = this.list.filter(s => s.id !== id);
  }
  async fork(id: string, path: string, offset: number) {
    await this.step('fork');
    return {
      path: `${path} fork ${offset}`,
      kernel_id: 'k2',
      session: { id: 'sess', path, kernel: { id: 'k2', name: 'jusnap-python3' } },
      parent_snapshot_id: id,
      parent_kernel_id: KID,
      ports_moved: {}
    };
  }
  async restore(id: string) {
    await this.step('restore');
    const s = this.list.find(x => x.id === id)!;
    const pre = snap(`s${++this.n}`, { trigger: 'pre-restore', created_at: 1000 + this.n });
    this.list.push(pre);
    return { status: 'restored', snapshot: s, kernel: await this.kernel(KID), pre_restore: pre, seconds: 0.3 };
  }
}

function setup() {
  const client = new FakeClient();
  const store = new SnapshotStore(client, () => 5000);
  const seen: string[] = [];
  store.changed.connect((_, id) => seen.push(id));
  return { client, store, seen };
}

describe('SnapshotStore', () => {
  it('starts empty and loads kernel facts and snapshots newest first', async () => {
    const { client, store, seen } = setup();
    expect(store.state(KID)).toMatchObject({ kernel: null, snapshots: [], loadedAt: null });
    client.list = [snap('old', { created_at: 1 }), snap('new', { created_at: 2 })];
    const state = await store.refresh(KID);
    expect(state.snapshots.map(s => s.id)).toEqual(['new', 'old']);
    expect(state).toMatchObject({ auto: { enabled: true, cooldown: 5 }, loading: false, loadedAt: 5000, error: null });
    expect(state.fresh.size).toBe(0);
    expect(seen.every(id => id === KID)).toBe(true);
  });

  it('marks snapshots that appeared since the last refresh (auto-snapshots)', async () => {
    const { client, store } = setup();
    await store.refresh(KID);
    client.list.push(snap('auto1', { trigger: 'auto' }));
    expect([...(await store.refresh(KID)).fresh]).toEqual(['auto1']);
    expect((await store.refresh(KID)).fresh.size).toBe(0);
  });

  it('creates, relabels, deletes and clears, refreshing after each', async () => {
    const { client, store } = setup();
    const created = await store.create(KID, 'first');
    expect(created.status).toBe('created');
    expect(store.state(KID).snapshots.map(s => s.label)).toEqual(['first']);
    await store.create(KID);
    expect(store.state(KID).snapshots.map(s => s.id)).toEqual(['s2', 's1']);
    await store.relabel(KID, 's2', 'second');
    expect(store.find(KID, 's2')?.label).toBe('second');
    await store.remove(KID, 's1');
    expect(store.state(KID).snapshots.map(s => s.id)).toEqual(['s2']);
    await expect(store.clear(KID)).resolves.toBe(1);
    expect(store.state(KID).snapshots).toEqual([]);
    expect(client.calls.filter(c => c === 'snapshots').length).toBe(5);
  });

  it('is busy while restoring and shows the pre-restore snapshot after', async () => {
    const { client, store } = setup();
    await store.create(KID, 'x');
    client.hold();
    const job = store.restore(KID, 's1');
    await Promise.resolve();
    expect(store.state(KID).busy).toBe('restoring');
    client.release();
    const r = await job;
    expect(r.pre_restore?.trigger).toBe('pre-restore');
    expect(store.state(KID).busy).toBeNull();
    expect(store.state(KID).snapshots.map(s => s.trigger)).toEqual(['pre-restore', 'manual']);
  });

  it('clears busy and rethrows when an action fails', async () => {
    const { client, store } = setup();
    await store.refresh(KID);
    client.fail = new ApiError(409, 'busy', 'kernel busy');
    await expect(store.restore(KID, 'x')).rejects.toMatchObject({ code: 'busy' });
    expect(store.state(KID).busy).toBeNull();
  });

  it('records refresh errors; a kernel Jusnap does not know has no snapshots', async () => {
    const { client, store } = setup();
    client.list = [snap('a')];
    await store.refresh(KID);
    client.fail = new ApiError(503, 'daemon_unavailable', 'down');
    await expect(store.refresh(KID)).rejects.toMatchObject({ status: 503 });
    expect(store.state(KID).snapshots.length).toBe(1);
    expect(store.state(KID).error?.code).toBe('daemon_unavailable');
    client.fail = new ApiError(404, 'kernel_not_found', 'no such kernel');
    await expect(store.refresh(KID)).rejects.toBeInstanceOf(ApiError);
    expect(store.state(KID)).toMatchObject({ kernel: null, snapshots: [], auto: null });
    expect(store.state(KID).error?.isNotManaged).toBe(true);
    client.fail = null;
    await store.refresh(KID);
    expect(store.state(KID).error).toBeNull();
  });

  it('coalesces refreshes asked for while one runs into one more', async () => {
    const { client, store } = setup();
    client.hold();
    const first = store.refresh(KID);
    const second = store.refresh(KID);
    const third = store.refresh(KID);
    client.release();
    await Promise.all([first, second, third]);
    expect(client.calls.filter(c => c === 'snapshots').length).toBe(2);
  });

  it('toggles auto-snapshots and updates the state at once', async () => {
    const { store } = setup();
    await store.refresh(KID);
    await store.setAuto(KID, false);
    expect(store.state(KID).auto?.enabled).toBe(false);
  });

  it('forks without marking the kernel busy, and refreshes its list after', async () => {
    const { client, store } = setup();
    await store.create(KID, 'x');
    client.hold();
    const job = store.fork(KID, 's1', 'dir/a.ipynb', 60);
    await Promise.resolve();
    expect(store.state(KID).busy).toBeNull(); // the original kernel is not touched
    client.release();
    await expect(job).resolves.toMatchObject({ path: 'dir/a.ipynb fork 60', kernel_id: 'k2' });
    expect(client.calls.slice(-3)).toEqual(['fork', 'kernel', 'snapshots']);
  });

  it('knows the snapshot a fork came from, and asks for a deleted one only once', async () => {
    const { client, store } = setup();
    expect((await store.refresh(KID)).parent).toBeNull();
    expect(client.calls).not.toContain('snapshot');
    client.parentSnapshot = 'p1';
    client.others = [snap('p1', { label: 'origin', kernel_id: 'k0' })];
    expect((await store.refresh(KID)).parent?.label).toBe('origin');
    await store.refresh(KID);
    expect(client.calls.filter(c => c === 'snapshot').length).toBe(1); // kept, not re-read
    client.parentSnapshot = 'gone';
    expect((await store.refresh(KID)).parent).toBeNull();
    await store.refresh(KID);
    expect(client.calls.filter(c => c === 'snapshot').length).toBe(2);
    expect(store.state(KID).error).toBeNull(); // a deleted parent is no error of the kernel
  });

  it('forgets everything when pointed at another API', async () => {
    const { store, seen } = setup();
    await store.refresh(KID);
    seen.length = 0;
    store.client = new FakeClient();
    expect(store.state(KID).loadedAt).toBeNull();
    expect(seen).toEqual([KID]);
  });
});
