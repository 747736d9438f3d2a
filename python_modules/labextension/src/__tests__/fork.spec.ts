import { forkedFrom, notebookUrl, shortId, utcOffsetMinutes } from '../fork';
import type { IKernel } from '../types';
import { snap } from './fixtures';

const ULID = '01KB2X7Q8M3N4P5R6S7T8V9WXY';

function kernel(parent: string | null): IKernel {
  return {
    id: 'k2',
    status: 'running',
    pid: 1,
    notebook_path: 'a (fork of x 14-03).ipynb',
    execution_count: 1,
    execution_state: 'idle',
    parent_kernel_id: parent ? 'k1' : null,
    parent_snapshot_id: parent
  };
}

describe('Open as new notebook', () => {
  it('names a snapshot by the random tail of its id, as the server extension does', () => {
    expect(shortId(ULID)).toBe('8V9WXY');
  });

  it('opens the copy at its Notebook 7 URL, each path segment escaped', () => {
    expect(notebookUrl('/', 'a (fork of x 14-03).ipynb')).toBe('/notebooks/a%20(fork%20of%20x%2014-03).ipynb');
    expect(notebookUrl('http://h:8888/user/ann/', 'dir/sub/a#1?.ipynb')).toBe(
      'http://h:8888/user/ann/notebooks/dir/sub/a%231%3F.ipynb'
    );
    expect(notebookUrl('/base', '/dir//a.ipynb')).toBe('/base/notebooks/dir/a.ipynb');
  });

  it('says where a fork came from, also once its snapshot is gone', () => {
    expect(forkedFrom(kernel(null), null)).toBeNull();
    expect(forkedFrom(null, null)).toBeNull();
    const parent = snap(ULID, { label: 'before training', execution_count: 3 });
    expect(forkedFrom(kernel(ULID), parent)).toBe('Forked from “before training” [3]');
    expect(forkedFrom(kernel(ULID), null)).toBe('Forked from snapshot 8V9WXY');
    expect(forkedFrom(kernel(ULID), snap('other'))).toBe('Forked from snapshot 8V9WXY');
  });

  it('gives the browser’s offset from UTC in minutes east, never -0', () => {
    const t = 1_780_000_000;
    expect(utcOffsetMinutes(t)).toBe(-new Date(t * 1000).getTimezoneOffset() || 0);
    expect(Object.is(utcOffsetMinutes(t), -0)).toBe(false);
  });
});
