import { DEFAULT_SETTINGS, mayAskPermission, mayNotifyBrowser, readSettings } from '../settings';

describe('readSettings', () => {
  it('gives the defaults for nothing', () => {
    expect(readSettings(null)).toEqual(DEFAULT_SETTINGS);
    expect(readSettings({})).toEqual(DEFAULT_SETTINGS);
  });

  it('reads values and ignores wrong types', () => {
    const s = readSettings({ apiBaseUrl: ' https://x/ ', confirmRestore: false, notifications: 'no', refreshInterval: 30 });
    expect(s).toMatchObject({ apiBaseUrl: 'https://x/', confirmRestore: false, notifications: true, refreshInterval: 30 });
  });

  it('bounds the refresh interval; 0 or less turns it off', () => {
    expect(readSettings({ refreshInterval: 0 }).refreshInterval).toBe(0);
    expect(readSettings({ refreshInterval: -3 }).refreshInterval).toBe(0);
    expect(readSettings({ refreshInterval: 0.5 }).refreshInterval).toBe(2);
    expect(readSettings({ refreshInterval: 1e9 }).refreshInterval).toBe(3600);
    expect(readSettings({ refreshInterval: 'x' }).refreshInterval).toBe(15);
  });
});

describe('browser notifications', () => {
  const on = readSettings({ browserNotifications: true });
  const off = readSettings({});

  it('need opt-in, a secure context and permission', () => {
    expect(mayNotifyBrowser(on, { isSecureContext: true, permission: 'granted' })).toBe(true);
    expect(mayNotifyBrowser(off, { isSecureContext: true, permission: 'granted' })).toBe(false);
    expect(mayNotifyBrowser(on, { isSecureContext: false, permission: 'granted' })).toBe(false);
    expect(mayNotifyBrowser(on, { isSecureContext: true, permission: 'default' })).toBe(false);
    expect(mayNotifyBrowser(on, { isSecureContext: true, permission: undefined })).toBe(false);
  });

  it('ask for permission only once it is undecided', () => {
    expect(mayAskPermission(on, { isSecureContext: true, permission: 'default' })).toBe(true);
    expect(mayAskPermission(on, { isSecureContext: true, permission: 'denied' })).toBe(false);
    expect(mayAskPermission(on, { isSecureContext: false, permission: 'default' })).toBe(false);
    expect(mayAskPermission(off, { isSecureContext: true, permission: 'default' })).toBe(false);
  });
});
