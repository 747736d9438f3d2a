/**
 * Shapes of the Jusnap REST API (app/jusnap/api/schemas.py), as the browser sees them.
 */

export type Trigger = 'manual' | 'auto' | 'pre-restore';

export interface ISnapshot {
  id: string;
  kernel_id: string;
  notebook_path: string | null;
  /** Unix seconds. */
  created_at: number;
  trigger: Trigger;
  label: string | null;
  size_bytes: number;
  frozen_seconds: number;
  execution_count: number | null;
  has_history?: boolean;
  hooks?: Record<string, unknown>;
}

export interface IAutoSettings {
  enabled: boolean;
  cooldown: number;
  /** Unix seconds when the trailing automatic snapshot is due (null: nothing pending). */
  pending_at?: number | null;
  /** Why the last automatic snapshot failed (null once one works again). */
  last_error?: string | null;
}

export interface IKernel {
  id: string;
  status: 'running' | 'dead' | 'stopped';
  pid: number | null;
  notebook_path: string | null;
  execution_count: number | null;
  execution_state: string | null;
  auto?: IAutoSettings;
  last_snapshot?: ISnapshot | null;
  /** What the daemon did to the kernel on its own (e.g. after a crash mid-restore). */
  notice?: string | null;
  /** A fork's origin: the kernel and the snapshot it was forked from (null: not a fork). */
  parent_kernel_id?: string | null;
  parent_snapshot_id?: string | null;
}

export interface ICreated {
  status: 'created';
  snapshot: ISnapshot;
}

export interface ISkipped {
  status: 'skipped';
  reason: string;
  retry_in: number;
}

export type CreateResult = ICreated | ISkipped;

export interface IRestored {
  status: string;
  snapshot: ISnapshot;
  kernel: IKernel;
  pre_restore: ISnapshot | null;
  seconds: number;
  criu_seconds?: number;
  handshake_seconds?: number;
}

/** What the Jupyter server's `jusnap/fork` answers: the copy and the fork's kernel. */
export interface IForked {
  /** The copy's path, relative to Jupyter's root. */
  path: string;
  kernel_id: string;
  session: { id: string; path: string; kernel: { id: string; name: string } };
  parent_snapshot_id: string;
  parent_kernel_id: string | null;
  ports_moved: Record<string, number>;
}

export interface ICleared {
  deleted: number;
}

/** The error body every Jusnap endpoint returns. */
export interface IErrorBody {
  error: string;
  message: string;
  details?: Record<string, unknown>;
}
