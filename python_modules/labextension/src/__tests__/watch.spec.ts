import { Signal } from '@lumino/signaling';

import { KernelWatch, kernelIdOf } from '../watch';

/** Just enough of ISessionContext: a session whose kernel can change, and its status. */
class FakeContext {
  session: { kernel: { id: string } | null } | null = { kernel: { id: 'k1' } };
  readonly kernelChanged = new Signal<this, unknown>(this);
  readonly sessionChanged = new Signal<this, unknown>(this);
  readonly statusChanged = new Signal<this, string>(this);
  readonly ready = Promise.resolve();

  setKernel(id: string | null): void {
    this.session = { kernel: id ? { id } : null };
    this.kernelChanged.emit(null);
  }
}

function watch(ctx: FakeContext): KernelWatch {
  return new KernelWatch(ctx as never);
}

describe('kernelIdOf', () => {
  it('reads the id through a session that may be missing', () => {
    expect(kernelIdOf(new FakeContext() as never)).toBe('k1');
    expect(kernelIdOf(null)).toBeNull();
    expect(kernelIdOf({ session: null } as never)).toBeNull();
  });
});

describe('KernelWatch', () => {
  it('follows kernel changes', () => {
    const ctx = new FakeContext();
    const w = watch(ctx);
    const seen: Array<string | null> = [];
    w.kernelChanged.connect((_, id) => seen.push(id));
    expect(w.kernelId).toBe('k1');
    ctx.setKernel('k2');
    ctx.setKernel('k2');
    ctx.setKernel(null);
    expect(seen).toEqual(['k2', null]);
  });

  it('reports busy → idle, not idle → idle or starting → idle', () => {
    const ctx = new FakeContext();
    const w = watch(ctx);
    const idle: string[] = [];
    w.idle.connect((_, id) => idle.push(id));
    for (const status of ['starting', 'idle', 'idle', 'busy', 'idle', 'busy', 'busy', 'idle']) {
      ctx.statusChanged.emit(status);
    }
    expect(idle).toEqual(['k1', 'k1']);
  });

  it('stops listening once disposed', () => {
    const ctx = new FakeContext();
    const w = watch(ctx);
    const idle: string[] = [];
    w.idle.connect((_, id) => idle.push(id));
    w.dispose();
    ctx.statusChanged.emit('busy');
    ctx.statusChanged.emit('idle');
    ctx.setKernel('k3');
    expect(idle).toEqual([]);
    expect(w.kernelId).toBe('k1');
    expect(w.isDisposed).toBe(true);
  });
});
