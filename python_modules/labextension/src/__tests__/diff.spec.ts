import { diffSnapshots, isEmptyDiff, newestFirst } from '../diff';
import { snap } from './fixtures';

describe('diffSnapshots', () => {
  it('finds added, removed and changed snapshots', () => {
    const before = [snap('a'), snap('b'), snap('c')];
    const after = [snap('d', { trigger: 'auto' }), snap('a', { label: 'x' }), snap('c')];
    const d = diffSnapshots(before, after);
    expect(d.added.map(s => s.id)).toEqual(['d']);
    expect(d.removed.map(s => s.id)).toEqual(['b']);
    expect(d.changed.map(s => s.id)).toEqual(['a']);
    expect(isEmptyDiff(d)).toBe(false);
  });

  it('is empty for equal lists', () => {
    expect(isEmptyDiff(diffSnapshots([snap('a')], [snap('a')]))).toBe(true);
    expect(isEmptyDiff(diffSnapshots([], []))).toBe(true);
  });
});

describe('newestFirst', () => {
  it('sorts by time, newest first, ties by id, without mutating', () => {
    const list = [snap('b', { created_at: 1 }), snap('a', { created_at: 3 }), snap('d', { created_at: 2 }), snap('c', { created_at: 2 })];
    expect(newestFirst(list).map(s => s.id)).toEqual(['a', 'c', 'd', 'b']);
    expect(list[0].id).toBe('b');
  });
});
