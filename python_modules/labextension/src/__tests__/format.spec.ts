import {
  formatBytes,
  formatDuration,
  localTime,
  relativeTime,
  skippedMessage,
  cooldownText,
  snapshotName,
  snapshotTitle,
  triggerLabel
} from '../format';
import { snap } from './fixtures';

describe('relativeTime', () => {
  const now = 1_700_000_000;
  it.each([
    [now, 'just now'],
    [now - 4, 'just now'],
    [now - 42, '42 s ago'],
    [now - 60, '1 min ago'],
    [now - 3599, '59 min ago'],
    [now - 3 * 3600, '3 h ago'],
    [now - 86400, 'yesterday'],
    [now - 4 * 86400 - 5, '4 days ago'],
    [now + 60, 'in the future'],
    [now + 2, 'just now']
  ])('%d → %s', (t, text) => {
    expect(relativeTime(t, now)).toBe(text);
  });
});

describe('localTime', () => {
  it('formats unix seconds in the given locale', () => {
    const text = localTime(0, 'en-GB');
    expect(text).toMatch(/1970|31\/12\/1969/);
  });
});

describe('formatBytes', () => {
  it.each([
    [0, '0 B'],
    [512, '512 B'],
    [1536, '1.50 KiB'],
    [41 * 1024 * 1024, '41.0 MiB'],
    [1066 * 1024 * 1024, '1.04 GiB'],
    [-1, '?'],
    [Number.NaN, '?']
  ])('%d → %s', (n, text) => {
    expect(formatBytes(n)).toBe(text);
  });
});

describe('formatDuration', () => {
  it.each([
    [0.18, '180 ms'],
    [0.0004, '0 ms'],
    [1.234, '1.23 s'],
    [12.34, '12.3 s'],
    [125, '2 min 5 s'],
    [-1, '?']
  ])('%d → %s', (s, text) => {
    expect(formatDuration(s)).toBe(text);
  });
});

describe('names', () => {
  it('labels triggers', () => {
    expect(triggerLabel('manual')).toBe('manual');
    expect(triggerLabel('auto')).toBe('auto');
    expect(triggerLabel('pre-restore')).toBe('before restore');
    expect(triggerLabel('other')).toBe('other');
  });

  it('titles snapshots by label, or by trigger', () => {
    const now = 1_700_000_120;
    expect(snapshotTitle(snap('a', { label: 'before training' }), now)).toBe('“before training” [3] · 2 min ago');
    expect(snapshotTitle(snap('a', { trigger: 'auto', execution_count: null }), now)).toBe('the auto snapshot · 2 min ago');
    expect(snapshotName(snap('a', { trigger: 'pre-restore' }))).toBe('the before restore snapshot [3]');
  });

  it('describes the cooldown', () => {
    expect(cooldownText(0)).toBe('no cooldown');
    expect(cooldownText(5)).toBe('at most one every 5.00 s');
  });

  it('explains skipped snapshots', () => {
    expect(skippedMessage('cooldown', 3.2)).toBe('Snapshot skipped: cooldown (retry in 3.20 s)');
    expect(skippedMessage('', 0)).toBe('Snapshot skipped: not taken');
  });
});
