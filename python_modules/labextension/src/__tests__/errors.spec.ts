import { ApiError, describe as describeError, errorFromResponse, networkError, restoreFailureTitle } from '../errors';

describe('errorFromResponse', () => {
  it('keeps Jusnap error codes, messages and details', () => {
    const e = errorFromResponse(500, JSON.stringify({ error: 'restore_failed', message: 'criu failed; the kernel was put back as it was', details: { rolled_back: true } }));
    expect(e).toMatchObject({ status: 500, code: 'restore_failed', message: 'criu failed; the kernel was put back as it was', details: { rolled_back: true } });
  });

  it('reads Jupyter server errors ({message, reason})', () => {
    expect(errorFromResponse(403, JSON.stringify({ message: "'_xsrf' argument missing from POST", reason: null })).message).toBe("'_xsrf' argument missing from POST");
    expect(errorFromResponse(403, JSON.stringify({ reason: 'Forbidden' })).message).toBe('Forbidden');
  });

  it.each([
    [401, 'unauthorized', /log in/],
    [403, 'forbidden', /XSRF/],
    [404, 'api_missing', /server extension/],
    [409, 'busy', /busy/],
    [422, 'refused', /refused/],
    [500, 'internal_error', /failed/],
    [502, 'daemon_unavailable', /not reachable/],
    [503, 'daemon_unavailable', /unavailable/],
    [504, 'timeout', /in time/],
    [507, 'no_space', /space/],
    [599, 'server_error', /HTTP 599/],
    [418, 'http_error', /HTTP 418/]
  ])('has a readable fallback for HTTP %i without a JSON body', (status, code, message) => {
    const e = errorFromResponse(status, '<html>Bad Gateway</html>');
    expect(e.code).toBe(code);
    expect(e.message).toMatch(message);
  });

  it('ignores JSON that is not an object', () => {
    expect(errorFromResponse(500, '[1,2]').code).toBe('internal_error');
    expect(errorFromResponse(500, '"x"').code).toBe('internal_error');
  });

  it('classifies errors', () => {
    expect(errorFromResponse(404, JSON.stringify({ error: 'kernel_not_found', message: 'no kernel' })).isNotManaged).toBe(true);
    expect(errorFromResponse(404, JSON.stringify({ error: 'snapshot_not_found', message: 'gone' })).isNotManaged).toBe(false);
    expect(errorFromResponse(404, '<html>404</html>').isNotManaged).toBe(false);
    expect(errorFromResponse(404, JSON.stringify({ message: 'nope' })).isNotManaged).toBe(true);
    expect(errorFromResponse(503, '').isTransient).toBe(true);
    expect(errorFromResponse(422, '').isTransient).toBe(false);
    expect(networkError(new Error('offline')).isTransient).toBe(true);
  });
});

describe('restoreFailureTitle', () => {
  it('says whether the kernel is back as it was', () => {
    expect(restoreFailureTitle(new ApiError(500, 'restore_failed', 'x', { rolled_back: true }))).toMatch(/unchanged/);
    expect(restoreFailureTitle(new ApiError(500, 'restore_failed', 'x', { rolled_back: false }))).toMatch(/restart the kernel/);
    expect(restoreFailureTitle(new ApiError(409, 'busy', 'x'))).toBe('Restore failed');
    expect(restoreFailureTitle(null)).toBe('Restore failed');
  });
});

describe('describe', () => {
  it('gives a message for anything thrown', () => {
    expect(describeError(new ApiError(409, 'busy', 'busy now'))).toBe('busy now');
    expect(describeError(new Error('boom'))).toBe('boom');
    expect(describeError('plain')).toBe('plain');
  });
});
