/**
 * Every snapshot action as a command: the main menu, the palette, the panel and the toolbar
 * all run these, so each action has one implementation (dialogs + store + feedback).
 */

import type { JupyterFrontEnd, ILabStatus } from '@jupyterlab/application';
import { Dialog, ICommandPalette, InputDialog, showDialog } from '@jupyterlab/apputils';
import type { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import type { ReadonlyPartialJSONObject } from '@lumino/coreutils';

import { CommandIds } from './commandIds';
import { restoreFailureTitle } from './errors';
import type { Feedback } from './feedback';
import { notebookUrl, utcOffsetMinutes } from './fork';
import {
  cooldownText,
  formatDuration,
  nowSeconds,
  skippedMessage,
  snapshotName,
  snapshotTitle
} from './format';
import type { IJusnapSettings } from './settings';
import type { SnapshotStore } from './store';
import type { IForked, ISnapshot } from './types';
import { kernelIdOf } from './watch';

export interface ICommandDeps {
  app: JupyterFrontEnd;
  tracker: INotebookTracker;
  store: SnapshotStore;
  feedback: Feedback;
  settings: () => IJusnapSettings;
  panelId: string;
  status: ILabStatus | null;
  palette: ICommandPalette | null;
}

const CATEGORY = 'Snapshots';

export function registerCommands(deps: ICommandDeps): void {
  const { app, tracker, store, feedback, settings } = deps;
  const { commands } = app;

  const kernelOf = (args: ReadonlyPartialJSONObject): string | null =>
    typeof args.kernelId === 'string' && args.kernelId
      ? args.kernelId
      : kernelIdOf(tracker.currentWidget?.sessionContext);

  const managed = (args: ReadonlyPartialJSONObject): boolean => {
    const id = kernelOf(args);
    return Boolean(id && store.state(id).kernel && !store.state(id).busy);
  };

  const hasSnapshots = (args: ReadonlyPartialJSONObject): boolean => {
    const id = kernelOf(args);
    return managed(args) && Boolean(id && store.state(id).snapshots.length);
  };

  /** The kernel to act on, loading its facts first if the UI has not seen it yet. */
  const requireKernel = async (args: ReadonlyPartialJSONObject): Promise<string | null> => {
    const id = kernelOf(args);
    if (!id) {
      feedback.error('Jusnap', new Error('open a notebook with a running kernel first'));
      return null;
    }
    if (store.state(id).loadedAt === null) {
      try {
        await store.refresh(id);
      } catch (error) {
        feedback.error('Cannot load snapshots', error);
        return null;
      }
    }
    return id;
  };

  /** The snapshot named by args.id, or one the user picks from the kernel's list. */
  const pick = async (kernelId: string, args: ReadonlyPartialJSONObject, verb: string): Promise<ISnapshot | null> => {
    if (typeof args.id === 'string') {
      const known = store.find(kernelId, args.id);
      if (known) {
        return known;
      }
      try {
        return await store.client.snapshot(args.id);
      } catch (error) {
        feedback.error(`Cannot ${verb.toLowerCase()}`, error);
        return null;
      }
    }
    const list = store.state(kernelId).snapshots;
    if (!list.length) {
      feedback.skipped('There are no snapshots of this kernel yet.');
      return null;
    }
    const now = nowSeconds();
    const titles = list.map((s, i) => `${i + 1}. ${snapshotTitle(s, now)}`);
    const result = await InputDialog.getItem({
      title: `${verb} snapshot`,
      label: 'Snapshot (newest first):',
      items: titles,
      current: 0,
      okLabel: verb
    });
    if (!result.button.accept || result.value === null) {
      return null;
    }
    return list[titles.indexOf(result.value)] ?? null;
  };

  const confirm = async (title: string, body: string, label: string, warn = true): Promise<boolean> => {
    const result = await showDialog({
      title,
      body,
      buttons: [
        Dialog.cancelButton(),
        warn ? Dialog.warnButton({ label }) : Dialog.okButton({ label })
      ]
    });
    return result.button.accept;
  };

  const create = async (kernelId: string, label: string | null): Promise<void> => {
    void feedback.askPermission();
    try {
      const result = await store.create(kernelId, label);
      if (result.status === 'created') {
        const s = result.snapshot;
        feedback.success(
          `Snapshot created${s.label ? ` “${s.label}”` : ''}: kernel frozen ${formatDuration(s.frozen_seconds)}`
        );
      } else {
        feedback.skipped(skippedMessage(result.reason, result.retry_in));
      }
    } catch (error) {
      feedback.error('Snapshot failed', error);
    }
  };

  commands.addCommand(CommandIds.create, {
    label: 'Create Snapshot',
    caption: 'Snapshot the kernel of the current notebook now',
    isEnabled: args => managed(args),
    execute: async args => {
      const id = await requireKernel(args);
      if (id) {
        await create(id, typeof args.label === 'string' ? args.label : null);
      }
    }
  });

  commands.addCommand(CommandIds.createLabelled, {
    label: 'Create Snapshot with Label…',
    caption: 'Snapshot the kernel with a label of your choice',
    isEnabled: args => managed(args),
    execute: async args => {
      const id = await requireKernel(args);
      if (!id) {
        return;
      }
      const result = await InputDialog.getText({
        title: 'Create snapshot',
        label: 'Label (optional):',
        placeholder: 'e.g. before training',
        okLabel: 'Snapshot'
      });
      if (result.button.accept) {
        await create(id, result.value ?? null);
      }
    }
  });

  commands.addCommand(CommandIds.restore, {
    label: args => (args.id ? 'Restore' : 'Restore Snapshot…'),
    caption: 'Bring the kernel back to a snapshot, in place',
    isEnabled: args => hasSnapshots(args),
    execute: async args => {
      const id = await requireKernel(args);
      const snap = id ? await pick(id, args, 'Restore') : null;
      if (!id || !snap) {
        return;
      }
      const title = snapshotTitle(snap, nowSeconds());
      if (
        settings().confirmRestore &&
        !(await confirm(
          'Restore snapshot?',
          `The kernel goes back to ${title}. Its current state is saved first as a “before restore” snapshot.`,
          'Restore',
          false
        ))
      ) {
        return;
      }
      void feedback.askPermission();
      const busy = deps.status?.setBusy();
      const job = store.restore(id, snap.id);
      feedback.progress(
        job,
        `Restoring ${snapshotName(snap)}…`,
        r => `Kernel restored to ${snapshotName(r.snapshot)} in ${formatDuration(r.seconds)}`,
        restoreFailureTitle
      );
      try {
        await job;
      } catch {
        // shown by the progress notification
      } finally {
        busy?.dispose();
        // The kernel is the same process id-wise but its state changed under the client:
        // ask for kernel_info so the status indicator settles on idle without a reload.
        const panel = tracker.find(p => kernelIdOf(p.sessionContext) === id);
        void panel?.sessionContext.session?.kernel?.requestKernelInfo().catch(() => undefined);
      }
    }
  });

  /** The open notebook whose kernel is `kernelId`, the current one first. */
  const notebookOf = (kernelId: string): NotebookPanel | null => {
    const current = tracker.currentWidget;
    if (current && kernelIdOf(current.sessionContext) === kernelId) {
      return current;
    }
    return tracker.find(p => kernelIdOf(p.sessionContext) === kernelId) ?? null;
  };

  /** A browser tab for the copy, opened while the click still counts as the user's: one
   * opened when the fork is done, seconds later, is taken for a pop-up and blocked. */
  const blankTab = (): Window | null => {
    const tab = window.open('', '_blank');
    if (tab) {
      try {
        tab.document.title = 'Opening a fork…';
        tab.document.body.textContent = 'Jusnap: restoring the snapshot as a new notebook…';
      } catch {
        // not ours to write into (a browser that opened it elsewhere): it still navigates
      }
    }
    return tab;
  };

  commands.addCommand(CommandIds.fork, {
    label: args => (args.id ? 'Open as new notebook' : 'Open Snapshot as New Notebook…'),
    caption:
      'A copy of the notebook beside it, in a new tab, whose kernel is this snapshot, live; ' +
      'the notebook’s own kernel keeps running as it is',
    isEnabled: args => hasSnapshots(args),
    execute: async args => {
      const id = await requireKernel(args);
      const snap = id ? await pick(id, args, 'Open') : null;
      if (!id || !snap) {
        return;
      }
      const notebook = notebookOf(id);
      if (!notebook) {
        feedback.error('Cannot open as new notebook', new Error('the notebook of this kernel is not open'));
        return;
      }
      // JupyterLab opens the copy as a tab of its own; Notebook 7 in a browser tab.
      const inLab = app.name === 'JupyterLab';
      const tab = inLab ? null : blankTab();
      void feedback.askPermission();
      const job = (async (): Promise<IForked> => {
        if (notebook.context.model.dirty) {
          await notebook.context.save(); // the copy holds the cells the user sees
        }
        return store.fork(id, snap.id, notebook.context.path, utcOffsetMinutes(snap.created_at));
      })();
      feedback.progress(
        job,
        `Opening ${snapshotName(snap)} as a new notebook…`,
        r => `Opened ${r.path}: a fork of the kernel at ${snapshotName(snap)}`,
        () => 'Open as new notebook failed'
      );
      let forked: IForked;
      try {
        forked = await job;
      } catch {
        tab?.close(); // the failure is shown by the progress notification
        return;
      }
      if (tab && !tab.closed) {
        tab.location.href = notebookUrl(app.serviceManager.serverSettings.baseUrl, forked.path);
      } else {
        await commands.execute('docmanager:open', { path: forked.path });
      }
    }
  });

  commands.addCommand(CommandIds.remove, {
    label: args => (args.id ? 'Delete' : 'Delete Snapshot…'),
    caption: 'Delete one snapshot',
    isEnabled: args => hasSnapshots(args),
    execute: async args => {
      const id = await requireKernel(args);
      const snap = id ? await pick(id, args, 'Delete') : null;
      if (!id || !snap) {
        return;
      }
      const title = snapshotTitle(snap, nowSeconds());
      if (settings().confirmDelete && !(await confirm('Delete snapshot?', `Delete ${title}? This cannot be undone.`, 'Delete'))) {
        return;
      }
      try {
        await store.remove(id, snap.id);
        feedback.success(`Snapshot deleted: ${title}`);
      } catch (error) {
        feedback.error('Delete failed', error);
      }
    }
  });

  commands.addCommand(CommandIds.relabel, {
    label: args => (args.id ? 'Relabel' : 'Relabel Snapshot…'),
    caption: 'Change a snapshot’s label',
    isEnabled: args => hasSnapshots(args),
    execute: async args => {
      const id = await requireKernel(args);
      const snap = id ? await pick(id, args, 'Relabel') : null;
      if (!id || !snap) {
        return;
      }
      const result = await InputDialog.getText({
        title: 'Relabel snapshot',
        label: 'Label (empty to remove):',
        text: snap.label ?? '',
        okLabel: 'Save'
      });
      if (!result.button.accept) {
        return;
      }
      try {
        const updated = await store.relabel(id, snap.id, result.value ?? null);
        feedback.success(updated.label ? `Snapshot relabelled “${updated.label}”` : 'Snapshot label removed');
      } catch (error) {
        feedback.error('Relabel failed', error);
      }
    }
  });

  commands.addCommand(CommandIds.clear, {
    label: 'Clear All Snapshots…',
    caption: 'Delete every snapshot of the current notebook’s kernel',
    isEnabled: args => hasSnapshots(args),
    execute: async args => {
      const id = await requireKernel(args);
      if (!id) {
        return;
      }
      const n = store.state(id).snapshots.length;
      if (!(await confirm('Clear all snapshots?', `Delete all ${n} snapshots of this kernel? This cannot be undone.`, 'Delete all'))) {
        return;
      }
      try {
        const deleted = await store.clear(id);
        feedback.success(`Deleted ${deleted} snapshot${deleted === 1 ? '' : 's'}`);
      } catch (error) {
        feedback.error('Clear failed', error);
      }
    }
  });

  commands.addCommand(CommandIds.refresh, {
    label: 'Refresh Snapshot List',
    caption: 'Reload the snapshots of the current notebook’s kernel',
    isEnabled: args => Boolean(kernelOf(args)),
    execute: async args => {
      const id = kernelOf(args);
      if (!id) {
        return;
      }
      try {
        await store.refresh(id);
      } catch (error) {
        feedback.error('Cannot load snapshots', error);
      }
    }
  });

  commands.addCommand(CommandIds.toggleAuto, {
    label: 'Auto-Snapshot after Each Cell',
    caption: 'Turn automatic snapshots of this kernel on or off',
    isEnabled: args => managed(args),
    isToggled: args => {
      const id = kernelOf(args);
      return Boolean(id && store.state(id).auto?.enabled);
    },
    execute: async args => {
      const id = await requireKernel(args);
      if (!id) {
        return;
      }
      const enabled = !store.state(id).auto?.enabled;
      try {
        const auto = await store.setAuto(id, enabled);
        feedback.success(
          auto.enabled
            ? `Auto-snapshots on (${cooldownText(auto.cooldown)})`
            : 'Auto-snapshots off'
        );
      } catch (error) {
        feedback.error('Cannot change auto-snapshots', error);
      }
    }
  });

  commands.addCommand(CommandIds.openPanel, {
    label: 'Show Snapshots Panel',
    caption: 'Open the sidebar with the current notebook’s snapshots',
    execute: () => {
      app.shell.activateById(deps.panelId);
    }
  });

  // Menus and toolbar buttons re-query isEnabled / isToggled when states change.
  store.changed.connect(() => commands.notifyCommandChanged());
  tracker.currentChanged.connect(() => commands.notifyCommandChanged());

  if (deps.palette) {
    for (const command of [
      CommandIds.create,
      CommandIds.createLabelled,
      CommandIds.restore,
      CommandIds.fork,
      CommandIds.remove,
      CommandIds.relabel,
      CommandIds.clear,
      CommandIds.refresh,
      CommandIds.toggleAuto,
      CommandIds.openPanel
    ]) {
      deps.palette.addItem({ command, category: CATEGORY });
    }
  }
}
