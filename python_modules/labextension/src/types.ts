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

export interface ICleared {
  deleted: number;
}

/** The error body every Jusnap endpoint returns. */
export interface IErrorBody {
  error: string;
  message: string;
  details?: Record<string, unknown>;
}
