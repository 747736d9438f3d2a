/**
 * "Open as new notebook": the pure parts (names, URLs, the lineage line). No DOM here.
 */

import { joinUrl, mountUnder } from './client';
import { snapshotName } from './format';
import type { IKernel, ISnapshot } from './types';

/** The random tail of a ULID: its head is a timestamp, alike for snapshots taken together.
 * (The server extension names unlabelled forks the same way: jusnap_jupyter/fork.py.) */
export const SHORT_ID = 6;

export function shortId(snapshotId: string): string {
  return snapshotId.slice(-SHORT_ID);
}

/** Minutes east of UTC in the browser's time zone at that moment (DST included): the copy's
 * name says when the snapshot was taken in the user's time, not the server's. */
export function utcOffsetMinutes(seconds: number): number {
  const offset = -new Date(seconds * 1000).getTimezoneOffset();
  return offset === 0 ? 0 : offset; // never -0 in JSON
}

/** Where Notebook 7 shows the notebook at `path` (relative to Jupyter's root). */
export function notebookUrl(baseUrl: string, path: string): string {
  const encoded = path
    .split('/')
    .filter(Boolean)
    .map(part => encodeURIComponent(part))
    .join('/');
  return joinUrl(mountUnder(baseUrl, 'notebooks'), encoded);
}

/** "Forked from “before training” [3]" for a fork's kernel; null for any other kernel.
 * `parent` is the snapshot when it could be read (it may have been deleted since). */
export function forkedFrom(kernel: IKernel | null, parent: ISnapshot | null): string | null {
  const id = kernel?.parent_snapshot_id;
  if (!id) {
    return null;
  }
  if (parent && parent.id === id) {
    return `Forked from ${snapshotName(parent)}`;
  }
  return `Forked from snapshot ${shortId(id)}`;
}
