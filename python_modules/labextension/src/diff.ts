/**
 * What changed between two snapshot lists, and the order they are shown in.
 */

import type { ISnapshot } from './types';

export interface ISnapshotDiff {
  added: ISnapshot[];
  removed: ISnapshot[];
  changed: ISnapshot[];
}

function same(a: ISnapshot, b: ISnapshot): boolean {
  return (
    a.label === b.label &&
    a.size_bytes === b.size_bytes &&
    a.trigger === b.trigger &&
    a.created_at === b.created_at &&
    a.execution_count === b.execution_count
  );
}

export function diffSnapshots(before: readonly ISnapshot[], after: readonly ISnapshot[]): ISnapshotDiff {
  const old = new Map(before.map(s => [s.id, s]));
  const now = new Map(after.map(s => [s.id, s]));
  return {
    added: after.filter(s => !old.has(s.id)),
    removed: before.filter(s => !now.has(s.id)),
    changed: after.filter(s => {
      const prev = old.get(s.id);
      return prev !== undefined && !same(prev, s);
    })
  };
}

export function isEmptyDiff(diff: ISnapshotDiff): boolean {
  return !diff.added.length && !diff.removed.length && !diff.changed.length;
}

/** Newest first; ties broken by id so the order is stable. */
export function newestFirst(list: readonly ISnapshot[]): ISnapshot[] {
  return [...list].sort((a, b) => b.created_at - a.created_at || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
}
