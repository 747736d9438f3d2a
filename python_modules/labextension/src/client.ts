/**
 * The Jusnap REST API client. Transport is injected (ServerConnection.makeRequest in the
 * browser, a fake in unit tests), so this module has no DOM or JupyterLab dependency.
 */

import { errorFromResponse, networkError } from './errors';
import type {
  CreateResult,
  IAutoSettings,
  ICleared,
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

/** The API root for a base URL such as `/user/ann/` or `https://example.com/`. */
export function apiRoot(baseUrl: string): string {
  return joinUrl(baseUrl || '/', API_PATH).replace(/^(?!\/|[a-z]+:)/i, '/');
}

const id = encodeURIComponent;

export class JusnapClient {
  constructor(
    private readonly request: Requester,
    readonly root: string
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

  private async call<T>(
    method: IRequestInit['method'],
    path: string,
    body?: unknown
  ): Promise<T> {
    const init: IRequestInit = { method };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers = { 'Content-Type': 'application/json' };
    }
    let response: IHttpResponse;
    try {
      response = await this.request(joinUrl(this.root, path), init);
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
