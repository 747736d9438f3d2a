/**
 * The snapshot state of every kernel the UI has looked at, kept fresh from the API.
 *
 * Views (panel, toolbar buttons, command states) read `state(kernelId)` and redraw on
 * `changed`. Actions go through here so that every view sees their effect at once.
 * No DOM dependency: unit-tested with a fake client.
 */

import { ISignal, Signal } from '@lumino/signaling';

import type { JusnapClient } from './client';
import { diffSnapshots, newestFirst } from './diff';
import { ApiError } from './errors';
import type {
  CreateResult,
  IAutoSettings,
  IForked,
  IKernel,
  IRestored,
  ISnapshot
} from './types';

export type Busy = 'creating' | 'restoring' | 'deleting' | 'clearing' | null;

export interface IKernelState {
  readonly kernelId: string;
  readonly kernel: IKernel | null;
  readonly auto: IAutoSettings | null;
  /** Newest first. */
  readonly snapshots: readonly ISnapshot[];
  /** Why the last refresh failed (null once one succeeds). */
  readonly error: ApiError | null;
  readonly loading: boolean;
  readonly busy: Busy;
  /** Unix seconds of the last successful refresh. */
  readonly loadedAt: number | null;
  /** Ids that appeared in the last refresh (after the first one), for highlighting. */
  readonly fresh: ReadonlySet<string>;
  /** For a fork: the snapshot it was forked from, when it can still be read. */
  readonly parent: ISnapshot | null;
}

export type ClientLike = Pick<
  JusnapClient,
  | 'kernel'
  | 'snapshots'
  | 'snapshot'
  | 'create'
  | 'clear'
  | 'setAuto'
  | 'relabel'
  | 'remove'
  | 'restore'
  | 'fork'
>;

function initial(kernelId: string): IKernelState {
  return {
    kernelId,
    kernel: null,
    auto: null,
    snapshots: [],
    error: null,
    loading: false,
    busy: null,
    loadedAt: null,
    fresh: new Set(),
    parent: null
  };
}

export class SnapshotStore {
  private readonly states = new Map<string, IKernelState>();
  private readonly inflight = new Map<string, Promise<IKernelState>>();
  private readonly queued = new Map<string, Promise<IKernelState>>();
  private readonly _changed = new Signal<this, string>(this);
  /** Parent snapshots that could not be read: not asked for again on every refresh. */
  private readonly unreadable = new Set<string>();
  private _client: ClientLike;

  constructor(
    client: ClientLike,
    private readonly clock: () => number = () => Date.now() / 1000
  ) {
    this._client = client;
  }

  /** Emits the id of the kernel whose state changed. */
  get changed(): ISignal<this, string> {
    return this._changed;
  }

  get client(): ClientLike {
    return this._client;
  }

  /** Point at another API (settings changed): forget everything. */
  set client(client: ClientLike) {
    this._client = client;
    const ids = [...this.states.keys()];
    this.states.clear();
    ids.forEach(id => this._changed.emit(id));
  }

  state(kernelId: string): IKernelState {
    return this.states.get(kernelId) ?? initial(kernelId);
  }

  find(kernelId: string, snapshotId: string): ISnapshot | undefined {
    return this.state(kernelId).snapshots.find(s => s.id === snapshotId);
  }

  /**
   * Reload a kernel's facts and snapshots. Calls made while one is running share it and
   * trigger exactly one more, so that the result reflects everything done before the call.
   */
  refresh(kernelId: string): Promise<IKernelState> {
    const running = this.inflight.get(kernelId);
    if (running) {
      let next = this.queued.get(kernelId);
      if (!next) {
        next = running
          .catch(() => undefined)
          .then(() => {
            this.queued.delete(kernelId);
            return this.refresh(kernelId);
          });
        this.queued.set(kernelId, next);
      }
      return next;
    }
    const job = this.load(kernelId).finally(() => {
      this.inflight.delete(kernelId);
    });
    this.inflight.set(kernelId, job);
    return job;
  }

  async create(kernelId: string, label?: string | null): Promise<CreateResult> {
    return this.act(kernelId, 'creating', () => this._client.create(kernelId, label));
  }

  async restore(kernelId: string, snapshotId: string): Promise<IRestored> {
    return this.act(kernelId, 'restoring', () => this._client.restore(snapshotId, kernelId));
  }

  /** Open a snapshot as a new notebook (a copy of `path` on a fork of the kernel). The
   * kernel itself is untouched, so it is not marked busy; its list is refreshed after. */
  async fork(kernelId: string, snapshotId: string, path: string, utcOffsetMinutes: number): Promise<IForked> {
    return this.act(kernelId, null, () => this._client.fork(snapshotId, path, utcOffsetMinutes));
  }

  async remove(kernelId: string, snapshotId: string): Promise<void> {
    await this.act(kernelId, 'deleting', () => this._client.remove(snapshotId));
  }

  async clear(kernelId: string): Promise<number> {
    const result = await this.act(kernelId, 'clearing', () => this._client.clear(kernelId));
    return result?.deleted ?? 0;
  }

  async relabel(kernelId: string, snapshotId: string, label: string | null): Promise<ISnapshot> {
    return this.act(kernelId, null, () => this._client.relabel(snapshotId, label));
  }

  async setAuto(kernelId: string, enabled: boolean): Promise<IAutoSettings> {
    const auto = await this._client.setAuto(kernelId, { enabled });
    this.update(kernelId, { auto });
    void this.refresh(kernelId).catch(() => undefined);
    return auto;
  }

  /** Run an action with the kernel marked busy, then refresh whatever its outcome. */
  private async act<T>(kernelId: string, busy: Busy, action: () => Promise<T>): Promise<T> {
    if (busy) {
      this.update(kernelId, { busy });
    }
    try {
      return await action();
    } finally {
      if (busy) {
        this.update(kernelId, { busy: null });
      }
      await this.refresh(kernelId).catch(() => undefined);
    }
  }

  private async load(kernelId: string): Promise<IKernelState> {
    this.update(kernelId, { loading: true });
    const client = this._client;
    try {
      const [kernel, list] = await Promise.all([
        client.kernel(kernelId),
        client.snapshots(kernelId)
      ]);
      if (client !== this._client) {
        return this.state(kernelId);
      }
      const before = this.state(kernelId);
      const parent = await this.parentOf(kernel, before.parent);
      if (client !== this._client) {
        return this.state(kernelId);
      }
      const snapshots = newestFirst(list);
      const fresh =
        before.loadedAt === null
          ? new Set<string>()
          : new Set(diffSnapshots(before.snapshots, snapshots).added.map(s => s.id));
      return this.update(kernelId, {
        kernel,
        auto: kernel.auto ?? before.auto,
        snapshots,
        error: null,
        loading: false,
        loadedAt: this.clock(),
        fresh,
        parent
      });
    } catch (error) {
      const apiError =
        error instanceof ApiError ? error : new ApiError(0, 'client_error', String(error));
      const before = this.state(kernelId);
      this.update(kernelId, {
        error: apiError,
        loading: false,
        // A kernel Jusnap does not know has no snapshots; keep the list on transient errors.
        ...(apiError.isNotManaged ? { kernel: null, auto: null, snapshots: [] } : {}),
        fresh: before.fresh.size ? new Set<string>() : before.fresh
      });
      throw apiError;
    }
  }

  /** A fork's parent snapshot, read once per kernel (null once it cannot be read). */
  private async parentOf(kernel: IKernel, known: ISnapshot | null): Promise<ISnapshot | null> {
    const id = kernel.parent_snapshot_id;
    if (!id) {
      return null;
    }
    if (known && known.id === id) {
      return known;
    }
    if (this.unreadable.has(id)) {
      return null;
    }
    try {
      return await this._client.snapshot(id);
    } catch {
      this.unreadable.add(id); // deleted since, or not readable: the panel shows its short id
      return null;
    }
  }

  private update(kernelId: string, change: Partial<IKernelState>): IKernelState {
    const next = { ...this.state(kernelId), ...change };
    this.states.set(kernelId, next);
    this._changed.emit(kernelId);
    return next;
  }
}
