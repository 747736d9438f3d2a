/**
 * Turning a failed HTTP exchange into one error with a message a person can act on.
 *
 * No DOM and no JupyterLab imports: unit-tested on its own.
 */

/** Pseudo status for a request that never got an HTTP answer. */
export const NETWORK_ERROR = 0;

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly details: Record<string, unknown> = {}
  ) {
    super(message);
    this.name = 'ApiError';
  }

  /** The kernel of this notebook is not one Jusnap launched (or is gone). */
  get isNotManaged(): boolean {
    return this.status === 404 && (this.code === 'kernel_not_found' || this.code === 'not_found');
  }

  /** Worth trying again later without changing anything. */
  get isTransient(): boolean {
    return (
      this.status === NETWORK_ERROR ||
      this.status === 409 ||
      this.status === 502 ||
      this.status === 503 ||
      this.status === 504
    );
  }
}

const FALLBACK: Record<number, [string, string]> = {
  [NETWORK_ERROR]: [
    'network_error',
    'Cannot reach the Jusnap API: check the connection to the server.'
  ],
  400: ['bad_request', 'The Jusnap API rejected the request.'],
  401: [
    'unauthorized',
    'Not logged in to Jupyter any more: reload the page and log in again.'
  ],
  403: [
    'forbidden',
    'Jupyter refused the request (login or XSRF token): reload the page and try again.'
  ],
  404: ['not_found', 'Not found: this kernel is not managed by Jusnap.'],
  409: [
    'busy',
    'The kernel is busy with another snapshot operation: try again in a moment.'
  ],
  422: ['refused', 'Jusnap refused the operation.'],
  500: ['internal_error', 'The Jusnap daemon failed (server error).'],
  502: [
    'daemon_unavailable',
    'The Jusnap daemon is not reachable from Jupyter (bad gateway).'
  ],
  503: ['daemon_unavailable', 'The Jusnap daemon is unavailable.'],
  504: ['timeout', 'The Jusnap daemon did not answer in time.'],
  507: ['no_space', 'No space left to store the snapshot.']
};

function fallback(status: number): [string, string] {
  if (FALLBACK[status]) {
    return FALLBACK[status];
  }
  if (status >= 500) {
    return ['server_error', `The Jusnap API failed (HTTP ${status}).`];
  }
  return ['http_error', `The Jusnap API answered HTTP ${status}.`];
}

function parse(body: string): Record<string, unknown> | null {
  try {
    const value: unknown = JSON.parse(body);
    return value && typeof value === 'object' && !Array.isArray(value)
      ? (value as Record<string, unknown>)
      : null;
  } catch {
    return null;
  }
}

function text(value: unknown): string | null {
  return typeof value === 'string' && value.trim() ? value.trim() : null;
}

/**
 * The error for a non-2xx answer. Understands Jusnap's `{error, message, details}` and
 * Jupyter server's own `{message, reason}` (its 403 for a missing XSRF token, for example).
 */
export function errorFromResponse(status: number, body: string): ApiError {
  const json = parse(body);
  const [defaultCode, defaultMessage] = fallback(status);
  if (!json) {
    if (status === 404) {
      // Jupyter's own HTML 404: nothing serves the API under this server.
      return new ApiError(
        status,
        'api_missing',
        'The Jusnap API is not available under this Jupyter server: is the jusnap_jupyter server extension enabled?'
      );
    }
    return new ApiError(status, defaultCode, defaultMessage);
  }
  const code = text(json.error) ?? defaultCode;
  const details =
    json.details && typeof json.details === 'object'
      ? (json.details as Record<string, unknown>)
      : {};
  const message = text(json.message) ?? text(json.reason) ?? defaultMessage;
  return new ApiError(status, code, message, details);
}

/** The error for a request that failed before any HTTP answer (offline, DNS, CORS...). */
export function networkError(cause: unknown): ApiError {
  const [code, message] = fallback(NETWORK_ERROR);
  const why = cause instanceof Error && cause.message ? ` (${cause.message})` : '';
  return new ApiError(NETWORK_ERROR, code, message + why);
}

/**
 * The heading for a failed restore: whether the kernel is back as it was
 * (`details.rolled_back`) decides what the user has to do next.
 */
export function restoreFailureTitle(error: unknown): string {
  if (error instanceof ApiError && error.code === 'restore_failed') {
    return error.details.rolled_back === false
      ? 'Restore failed and the kernel could not be put back: restart the kernel'
      : 'Restore failed; the kernel is unchanged';
  }
  return 'Restore failed';
}

/** A message for anything thrown by an action: API errors keep the server's message. */
export function describe(error: unknown): string {
  if (error instanceof ApiError) {
    return error.message;
  }
  if (error instanceof Error && error.message) {
    return error.message;
  }
  return String(error);
}
