/**
 * Telling the user what happened: JupyterLab's in-app notifications, and system
 * notifications where the page is a secure context and the user allowed them.
 */

import { Notification } from '@jupyterlab/apputils';

import { describe } from './errors';
import {
  IBrowserContext,
  IJusnapSettings,
  mayAskPermission,
  mayNotifyBrowser
} from './settings';

const TITLE = 'Jusnap';

function browserContext(): IBrowserContext {
  const api = (globalThis as { Notification?: typeof window.Notification }).Notification;
  return {
    isSecureContext: Boolean(globalThis.isSecureContext),
    permission: api ? api.permission : undefined
  };
}

export class Feedback {
  constructor(private readonly settings: () => IJusnapSettings) {}

  success(message: string): void {
    if (this.settings().notifications) {
      Notification.success(message, { autoClose: 4000 });
    }
    this.system(message);
  }

  /** Nothing failed but nothing happened (the cooldown skipped a snapshot). */
  skipped(message: string): void {
    if (this.settings().notifications) {
      Notification.warning(message, { autoClose: 5000 });
    }
    this.system(message);
  }

  /** Errors are always shown in-app; they stay until dismissed. */
  error(prefix: string, error: unknown): void {
    const message = `${prefix}: ${describe(error)}`;
    Notification.error(message, { autoClose: false });
    this.system(message);
  }

  /** A notification that shows progress and turns into the outcome. */
  progress<T>(
    promise: Promise<T>,
    pending: string,
    success: (result: T) => string,
    failure: (reason: unknown) => string
  ): void {
    Notification.promise(promise as Promise<never>, {
      pending: { message: pending, options: { autoClose: false } },
      success: {
        message: (result: unknown) => success(result as T),
        options: { autoClose: this.settings().notifications ? 5000 : 1 }
      },
      error: {
        message: (reason: unknown) => `${failure(reason)}: ${describe(reason)}`,
        options: { autoClose: false }
      }
    });
    promise.then(
      result => this.system(success(result)),
      reason => this.system(`${failure(reason)}: ${describe(reason)}`)
    );
  }

  /** Ask for permission from a user gesture (a command), once, if the user opted in. */
  async askPermission(): Promise<void> {
    if (mayAskPermission(this.settings(), browserContext())) {
      try {
        await window.Notification.requestPermission();
      } catch {
        // browsers that only take a callback, or that refuse outside a gesture
      }
    }
  }

  private system(message: string): void {
    if (!mayNotifyBrowser(this.settings(), browserContext()) || !document.hidden) {
      return;
    }
    try {
      new window.Notification(TITLE, { body: message, tag: 'jusnap' });
    } catch {
      // e.g. Android Chrome only allows notifications from a service worker
    }
  }
}
