/**
 * The extension's user settings (schema/plugin.json), read with defaults and bounds.
 */

export interface IJusnapSettings {
  /** Base URL the API lives under; empty means Jupyter's own base URL. */
  apiBaseUrl: string;
  confirmRestore: boolean;
  confirmDelete: boolean;
  /** In-app notifications for successes and skips (errors are always shown). */
  notifications: boolean;
  /** Also send system notifications (only in a secure context, with permission). */
  browserNotifications: boolean;
  /** Seconds between background refreshes of the visible list; 0 turns them off. */
  refreshInterval: number;
}

export const DEFAULT_SETTINGS: Readonly<IJusnapSettings> = Object.freeze({
  apiBaseUrl: '',
  confirmRestore: true,
  confirmDelete: true,
  notifications: true,
  browserNotifications: false,
  refreshInterval: 15
});

function bool(value: unknown, fallback: boolean): boolean {
  return typeof value === 'boolean' ? value : fallback;
}

export function readSettings(raw: Record<string, unknown> | null | undefined): IJusnapSettings {
  const src = raw ?? {};
  const base = typeof src.apiBaseUrl === 'string' ? src.apiBaseUrl.trim() : '';
  const interval = Number(src.refreshInterval);
  return {
    apiBaseUrl: base,
    confirmRestore: bool(src.confirmRestore, DEFAULT_SETTINGS.confirmRestore),
    confirmDelete: bool(src.confirmDelete, DEFAULT_SETTINGS.confirmDelete),
    notifications: bool(src.notifications, DEFAULT_SETTINGS.notifications),
    browserNotifications: bool(src.browserNotifications, DEFAULT_SETTINGS.browserNotifications),
    refreshInterval:
      src.refreshInterval === undefined || !Number.isFinite(interval)
        ? DEFAULT_SETTINGS.refreshInterval
        : interval <= 0
          ? 0
          : Math.min(Math.max(interval, 2), 3600)
  };
}

export interface IBrowserContext {
  isSecureContext: boolean;
  /** `Notification.permission`, or undefined where the API does not exist. */
  permission: 'default' | 'denied' | 'granted' | undefined;
}

/** System notifications only where allowed: secure page, user opted in, permission granted. */
export function mayNotifyBrowser(settings: IJusnapSettings, ctx: IBrowserContext): boolean {
  return settings.browserNotifications && ctx.isSecureContext && ctx.permission === 'granted';
}

/** Whether asking for permission makes sense (never asks again after a refusal). */
export function mayAskPermission(settings: IJusnapSettings, ctx: IBrowserContext): boolean {
  return settings.browserNotifications && ctx.isSecureContext && ctx.permission === 'default';
}
