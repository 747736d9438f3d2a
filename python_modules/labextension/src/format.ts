/**
 * How snapshot facts are written for people. Pure functions: `now` is passed in.
 */

import type { ISnapshot, Trigger } from './types';

const MINUTE = 60;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;

/** "just now", "42 s ago", "5 min ago", "3 h ago", "yesterday", "4 days ago". */
export function relativeTime(seconds: number, nowSeconds: number): string {
  const age = Math.round(nowSeconds - seconds);
  if (age < -5) {
    return 'in the future';
  }
  if (age < 5) {
    return 'just now';
  }
  if (age < MINUTE) {
    return `${age} s ago`;
  }
  if (age < HOUR) {
    return `${Math.floor(age / MINUTE)} min ago`;
  }
  if (age < DAY) {
    return `${Math.floor(age / HOUR)} h ago`;
  }
  const days = Math.floor(age / DAY);
  return days === 1 ? 'yesterday' : `${days} days ago`;
}

/** Local date and time, e.g. "26/11/2026, 14:03:07" in the browser's locale. */
export function localTime(seconds: number, locale?: string): string {
  return new Date(seconds * 1000).toLocaleString(locale);
}

/** Binary units as CRIU images are counted: "41.0 MiB". */
export function formatBytes(bytes: number): string {
  if (!Number.isFinite(bytes) || bytes < 0) {
    return '?';
  }
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(value < 10 ? 2 : 1)} ${units[unit]}`;
}

/** Short durations: "350 ms", "1.24 s", "2 min 5 s". */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) {
    return '?';
  }
  if (seconds < 1) {
    return `${Math.round(seconds * 1000)} ms`;
  }
  if (seconds < MINUTE) {
    return `${seconds.toFixed(seconds < 10 ? 2 : 1)} s`;
  }
  const minutes = Math.floor(seconds / MINUTE);
  return `${minutes} min ${Math.round(seconds - minutes * MINUTE)} s`;
}

const TRIGGERS: Record<Trigger, string> = {
  manual: 'manual',
  auto: 'auto',
  'pre-restore': 'before restore'
};

export function triggerLabel(trigger: Trigger | string): string {
  return TRIGGERS[trigger as Trigger] ?? trigger;
}

/** A snapshot's name in messages: its label, else its trigger; and its execution count. */
export function snapshotName(snapshot: ISnapshot): string {
  const name = snapshot.label ? `“${snapshot.label}”` : `the ${triggerLabel(snapshot.trigger)} snapshot`;
  const exec =
    snapshot.execution_count !== null && snapshot.execution_count !== undefined
      ? ` [${snapshot.execution_count}]`
      : '';
  return name + exec;
}

/** One line naming a snapshot in pickers and dialogs: name, execution count, age. */
export function snapshotTitle(snapshot: ISnapshot, nowSeconds: number): string {
  return `${snapshotName(snapshot)} · ${relativeTime(snapshot.created_at, nowSeconds)}`;
}

/** "no cooldown", "at most one every 5.00 s". */
export function cooldownText(seconds: number): string {
  return seconds > 0 ? `at most one every ${formatDuration(seconds)}` : 'no cooldown';
}

/** "Snapshotting skipped: cooldown (retry in 3.2 s)". */
export function skippedMessage(reason: string, retryIn: number): string {
  const retry = retryIn > 0 ? ` (retry in ${formatDuration(retryIn)})` : '';
  return `Snapshot skipped: ${reason || 'not taken'}${retry}`;
}

export function nowSeconds(): number {
  return Date.now() / 1000;
}
