import { apiRoot, joinUrl, JusnapClient } from '../client';
import { ApiError, NETWORK_ERROR } from '../errors';
import { fakeTransport, snap } from './fixtures';

describe('URLs', () => {
  it('joins parts with single slashes', () => {
    expect(joinUrl('http://h:8888/base/', '/jusnap/api/v1/', 'kernels')).toBe('http://h:8888/base/jusnap/api/v1/kernels');
    expect(joinUrl('', 'a', '', 'b/')).toBe('a/b');
  });

  it('mounts the API under Jupyter base URLs and configured URLs', () => {
    expect(apiRoot('/')).toBe('/jusnap/api/v1');
    expect(apiRoot('')).toBe('/jusnap/api/v1');
    expect(apiRoot('/user/ann/')).toBe('/user/ann/jusnap/api/v1');
    expect(apiRoot('user/ann')).toBe('/user/ann/jusnap/api/v1');
    expect(apiRoot('http://localhost:8888/')).toBe('http://localhost:8888/jusnap/api/v1');
    expect(apiRoot('https://example.com/lab')).toBe('https://example.com/lab/jusnap/api/v1');
  });
});

describe('JusnapClient', () => {
  const KID = '0b5e1c84-3e0c-4f0e-9a51-8f8d2c1e7a10';

  it('lists snapshots of a kernel with GET and escapes ids', async () => {
    const t = fakeTransport([[200, [snap('s1')]]]);
    const c = new JusnapClient(t.request, '/jusnap/api/v1');
    await expect(c.snapshots(KID)).resolves.toEqual([snap('s1')]);
    const t2 = fakeTransport([[200, {}]]);
    await new JusnapClient(t2.request, '/r').snapshot('a/b?c');
    expect(t2.calls[0].url).toBe('/r/snapshots/a%2Fb%3Fc');
    expect(t.calls).toEqual([{ url: `/jusnap/api/v1/kernels/${KID}/snapshots`, method: 'GET', body: undefined, headers: undefined }]);
  });

  it('creates with a trimmed label, or none', async () => {
    const t = fakeTransport([
      [201, { status: 'created', snapshot: snap('s1', { label: 'x' }) }],
      [201, { status: 'created', snapshot: snap('s2') }]
    ]);
    const c = new JusnapClient(t.request, '/r');
    await c.create(KID, '  x ');
    await c.create(KID, '   ');
    expect(t.calls[0]).toMatchObject({ method: 'POST', url: `/r/kernels/${KID}/snapshots`, body: { label: 'x' } });
    expect(t.calls[0].headers).toEqual({ 'Content-Type': 'application/json' });
    expect(t.calls[1].body).toEqual({});
  });

  it('returns a skipped result as data, not as an error', async () => {
    const t = fakeTransport([[200, { status: 'skipped', reason: 'cooldown', retry_in: 2.5 }]]);
    await expect(new JusnapClient(t.request, '/r').create(KID)).resolves.toEqual({ status: 'skipped', reason: 'cooldown', retry_in: 2.5 });
  });

  it('restores into the given kernel', async () => {
    const t = fakeTransport([[200, { status: 'restored', snapshot: snap('s1'), seconds: 0.4 }]]);
    const r = await new JusnapClient(t.request, '/r').restore('s1', KID);
    expect(r.seconds).toBe(0.4);
    expect(t.calls[0]).toMatchObject({ method: 'POST', url: '/r/snapshots/s1/restore', body: { kernel_id: KID } });
  });

  it('relabels, removes labels, deletes, clears and toggles auto', async () => {
    const t = fakeTransport([
      [200, snap('s1', { label: 'new' })],
      [200, snap('s1')],
      [204, ''],
      [200, { deleted: 3 }],
      [200, { enabled: false, cooldown: 5 }]
    ]);
    const c = new JusnapClient(t.request, '/r');
    await c.relabel('s1', ' new ');
    await c.relabel('s1', '');
    await expect(c.remove('s1')).resolves.toBeUndefined();
    await expect(c.clear(KID)).resolves.toEqual({ deleted: 3 });
    await expect(c.setAuto(KID, { enabled: false })).resolves.toEqual({ enabled: false, cooldown: 5 });
    expect(t.calls.map(x => [x.method, x.url, x.body])).toEqual([
      ['PATCH', '/r/snapshots/s1', { label: 'new' }],
      ['PATCH', '/r/snapshots/s1', { label: null }],
      ['DELETE', '/r/snapshots/s1', undefined],
      ['DELETE', `/r/kernels/${KID}/snapshots`, undefined],
      ['PATCH', `/r/kernels/${KID}/auto`, { enabled: false }]
    ]);
  });

  it('forks through the Jupyter server, not the API root', async () => {
    const forked = { path: 'a (fork of x 14-03).ipynb', kernel_id: 'k2' };
    const t = fakeTransport([[201, forked], [201, forked]]);
    await expect(new JusnapClient(t.request, '/user/ann/jusnap/api/v1', '/user/ann/jusnap/fork').fork('S1', 'd/a.ipynb', -300)).resolves.toEqual(forked);
    await new JusnapClient(t.request, 'https://api.example/jusnap/api/v1').fork('S1', 'a.ipynb', 0);
    expect(t.calls.map(x => [x.method, x.url, x.body])).toEqual([
      ['POST', '/user/ann/jusnap/fork', { snapshot_id: 'S1', path: 'd/a.ipynb', utc_offset_minutes: -300 }],
      ['POST', '/jusnap/fork', { snapshot_id: 'S1', path: 'a.ipynb', utc_offset_minutes: 0 }]
    ]);
  });

  it('maps HTTP errors to ApiError with the server message', async () => {
    const t = fakeTransport([[409, { error: 'busy', message: 'kernel k is being snapshotted' }]]);
    const error = await new JusnapClient(t.request, '/r').create(KID).catch(e => e);
    expect(error).toBeInstanceOf(ApiError);
    expect(error).toMatchObject({ status: 409, code: 'busy', message: 'kernel k is being snapshotted' });
    expect(error.isTransient).toBe(true);
  });

  it('maps a transport failure to a network error', async () => {
    const t = fakeTransport([new TypeError('Failed to fetch')]);
    const error = await new JusnapClient(t.request, '/r').kernel(KID).catch(e => e);
    expect(error).toMatchObject({ status: NETWORK_ERROR, code: 'network_error' });
    expect(error.message).toContain('Failed to fetch');
  });

  it('treats a 200 that is not JSON (a login page) as a bad gateway', async () => {
    const t = fakeTransport([[200, '<html>login</html>']]);
    await expect(new JusnapClient(t.request, '/r').kernel(KID)).rejects.toMatchObject({ status: 502 });
  });
});
