/**
 * Following one notebook's kernel: which one it is now, and when it finishes running code
 * (the moment an auto-snapshot may have been taken).
 */

import type { ISessionContext } from '@jupyterlab/apputils';
import type { Kernel } from '@jupyterlab/services';
import { IDisposable } from '@lumino/disposable';
import { ISignal, Signal } from '@lumino/signaling';

export function kernelIdOf(context: ISessionContext | null | undefined): string | null {
  return context?.session?.kernel?.id ?? null;
}

export class KernelWatch implements IDisposable {
  private _kernelId: string | null;
  private _status: Kernel.Status | null = null;
  private _disposed = false;
  private readonly _kernelChanged = new Signal<this, string | null>(this);
  private readonly _idle = new Signal<this, string>(this);

  constructor(private readonly context: ISessionContext) {
    this._kernelId = kernelIdOf(context);
    context.kernelChanged.connect(this.onKernelChanged, this);
    context.sessionChanged.connect(this.onKernelChanged, this);
    context.statusChanged.connect(this.onStatus, this);
    void context.ready.then(() => this.onKernelChanged());
  }

  get kernelId(): string | null {
    return this._kernelId;
  }

  /** The notebook now talks to another kernel (or none). */
  get kernelChanged(): ISignal<this, string | null> {
    return this._kernelChanged;
  }

  /** The kernel went from busy to idle: a cell (or a restore handshake) finished. */
  get idle(): ISignal<this, string> {
    return this._idle;
  }

  get isDisposed(): boolean {
    return this._disposed;
  }

  dispose(): void {
    if (this._disposed) {
      return;
    }
    this._disposed = true;
    Signal.clearData(this);
  }

  private onKernelChanged(): void {
    if (this._disposed) {
      return;
    }
    const id = kernelIdOf(this.context);
    if (id !== this._kernelId) {
      this._kernelId = id;
      this._kernelChanged.emit(id);
    }
  }

  private onStatus(_: ISessionContext, status: Kernel.Status): void {
    const was = this._status;
    this._status = status;
    this.onKernelChanged();
    if (status === 'idle' && was === 'busy' && this._kernelId) {
      this._idle.emit(this._kernelId);
    }
  }
}
