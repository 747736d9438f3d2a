/**
 * The Jusnap REST API client. Transport is injected (ServerConnection.makeRequest in the
 * browser, a fake in unit tests), so this module has no DOM or JupyterLab dependency.
 */

import { errorFromResponse, networkError } from './errors';
import type {
  CreateResult,
  IAutoSettings,
  ICleared,
  IForked,
  IKernel,
  IRestored,
  ISnapshot
} from './types';

/** The part of a fetch Response the client reads. */
export interface IHttpResponse {
  readonly status: number;
  readonly ok: boolean;
  text(): Promise<string>;
}

export interface IRequestInit {
  method: 'GET' | 'POST' | 'PATCH' | 'DELETE';
  body?: string;
  headers?: Record<string, string>;
}

export type Requester = (url: string, init: IRequestInit) => Promise<IHttpResponse>;

/** The API's mount point below a base URL (Jupyter's, or the configured one). */
export const API_PATH = 'jusnap/api/v1';
/** "Open as new notebook" below Jupyter's base URL (the jusnap_jupyter server extension). */
export const FORK_PATH = 'jusnap/fork';

/** Join URL parts with exactly one slash between them. */
export function joinUrl(base: string, ...parts: string[]): string {
  let url = base.replace(/\/+$/, '');
  for (const part of parts) {
    const clean = part.replace(/^\/+|\/+$/g, '');
    if (clean) {
      url = url ? `${url}/${clean}` : clean;
    }
  }
  return url;
}

/** `path` mounted under a base URL such as `/user/ann/` or `https://example.com/`. */
export function mountUnder(baseUrl: string, path: string): string {
  return joinUrl(baseUrl || '/', path).replace(/^(?!\/|[a-z]+:)/i, '/');
}

/** The API root for a base URL such as `/user/ann/` or `https://example.com/`. */
export function apiRoot(baseUrl: string): string {
  return mountUnder(baseUrl, API_PATH);
}

const id = encodeURIComponent;

export class JusnapClient {
  /**
   * @param root the API root (`apiRoot(...)`)
   * @param forkUrl the Jupyter server's fork endpoint: a fork copies a notebook and starts a
   *   Jupyter session, which only the Jupyter server can do (not the daemon's API alone)
   */
  constructor(
    private readonly request: Requester,
    readonly root: string,
    readonly forkUrl: string = mountUnder('/', FORK_PATH)
  ) {}

  kernel(kernelId: string): Promise<IKernel> {
    return this.call('GET', `kernels/${id(kernelId)}`);
  }

  snapshots(kernelId: string): Promise<ISnapshot[]> {
    return this.call('GET', `kernels/${id(kernelId)}/snapshots`);
  }

  create(kernelId: string, label?: string | null): Promise<CreateResult> {
    const body = label && label.trim() ? { label: label.trim() } : {};
    return this.call('POST', `kernels/${id(kernelId)}/snapshots`, body);
  }

  clear(kernelId: string): Promise<ICleared> {
    return this.call('DELETE', `kernels/${id(kernelId)}/snapshots`);
  }

  auto(kernelId: string): Promise<IAutoSettings> {
    return this.call('GET', `kernels/${id(kernelId)}/auto`);
  }

  setAuto(kernelId: string, change: Partial<IAutoSettings>): Promise<IAutoSettings> {
    return this.call('PATCH', `kernels/${id(kernelId)}/auto`, change);
  }

  snapshot(snapshotId: string): Promise<ISnapshot> {
    return this.call('GET', `snapshots/${id(snapshotId)}`);
  }

  relabel(snapshotId: string, label: string | null): Promise<ISnapshot> {
    const clean = label && label.trim() ? label.trim() : null;
    return this.call('PATCH', `snapshots/${id(snapshotId)}`, { label: clean });
  }

  remove(snapshotId: string): Promise<void> {
    return this.call('DELETE', `snapshots/${id(snapshotId)}`);
  }

  restore(snapshotId: string, kernelId: string): Promise<IRestored> {
    return this.call('POST', `snapshots/${id(snapshotId)}/restore`, {
      kernel_id: kernelId
    });
  }

  /** Open a snapshot as a new notebook: a copy of `path` beside it, on a fork of the kernel. */
  fork(snapshotId: string, path: string, utcOffsetMinutes: number): Promise<IForked> {
    return this.send('POST', this.forkUrl, {
      snapshot_id: snapshotId,
      path,
      utc_offset_minutes: utcOffsetMinutes
    });
  }

  private call<T>(method: IRequestInit['method'], path: string, body?: unknown): Promise<T> {
    return this.send(method, joinUrl(this.root, path), body);
  }

  private async send<T>(
    method: IRequestInit['method'],
    url: string,
    body?: unknown
  ): Promise<T> {
    const init: IRequestInit = { method };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers = { 'Content-Type': 'application/json' };
    }
    let response: IHttpResponse;
    try {
      response = await this.request(url, init);
    } catch (cause) {
      throw networkError(cause);
    }
    let text = '';
    try {
      text = await response.text();
    } catch (cause) {
      if (response.ok) {
        throw networkError(cause);
      }
    }
    if (!response.ok) {
      throw errorFromResponse(response.status, text);
    }
    if (response.status === 204 || !text) {
      return undefined as T;
    }
    try {
      return JSON.parse(text) as T;
    } catch {
      throw errorFromResponse(502, '');
    }
  }
}
