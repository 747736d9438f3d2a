import type { ISnapshot } from '../types';

export function snap(id: string, over: Partial<ISnapshot> = {}): ISnapshot {
  return {
    id,
    kernel_id: 'k1',
    notebook_path: 'a.ipynb',
    created_at: 1_700_000_000,
    trigger: 'manual',
    label: null,
    size_bytes: 42 * 1024 * 1024,
    frozen_seconds: 0.18,
    execution_count: 3,
    has_history: true,
    hooks: {},
    ...over
  };
}

export interface IFakeCall {
  url: string;
  method: string;
  body?: unknown;
  headers?: Record<string, string>;
}

/** A transport that answers from a queue and records what was asked. */
export function fakeTransport(answers: Array<[number, unknown] | Error>) {
  const calls: IFakeCall[] = [];
  const request = async (url: string, init: { method: string; body?: string; headers?: Record<string, string> }) => {
    calls.push({ url, method: init.method, body: init.body ? JSON.parse(init.body) : undefined, headers: init.headers });
    const next = answers.shift();
    if (!next) {
      throw new Error('no answer queued');
    }
    if (next instanceof Error) {
      throw next;
    }
    const [status, body] = next;
    const text = typeof body === 'string' ? body : body === undefined ? '' : JSON.stringify(body);
    return { status, ok: status >= 200 && status < 300, text: async () => text };
  };
  return { calls, request };
}
