/**
 * The sidebar panel: the current notebook's snapshots, newest first, with their actions.
 */

import type { CommandRegistry } from '@lumino/commands';
import { Widget } from '@lumino/widgets';
import { LabIcon } from '@jupyterlab/ui-components';

import { CommandIds } from './commandIds';
import { h } from './dom';
import { describe } from './errors';
import {
  cooldownText,
  formatBytes,
  formatDuration,
  localTime,
  nowSeconds,
  relativeTime,
  triggerLabel
} from './format';
import { forkedFrom } from './fork';
import type { IKernelState, SnapshotStore } from './store';
import type { ISnapshot } from './types';

const BUSY_TEXT: Record<string, string> = {
  creating: 'Taking a snapshot…',
  restoring: 'Restoring the kernel…',
  deleting: 'Deleting…',
  clearing: 'Deleting all snapshots…'
};

export class SnapshotsPanel extends Widget {
  private kernelId: string | null = null;
  private notebookName = '';
  private readonly clock: number;

  constructor(
    private readonly store: SnapshotStore,
    private readonly commands: CommandRegistry,
    icon: LabIcon
  ) {
    super();
    this.id = 'jusnap-snapshots-panel';
    this.addClass('jp-JusnapPanel');
    this.title.icon = icon;
    this.title.caption = 'Kernel snapshots (Jusnap)';
    this.title.label = '';
    store.changed.connect((_, kernelId) => {
      if (kernelId === this.kernelId) {
        this.render();
      }
    }, this);
    // relative times age: redraw twice a minute
    this.clock = window.setInterval(() => this.isVisible && this.render(), 30_000);
    this.render();
  }

  dispose(): void {
    window.clearInterval(this.clock);
    super.dispose();
  }

  /** Show another notebook's kernel (null: no notebook or no kernel). */
  setKernel(kernelId: string | null, notebookName: string): void {
    const changed = kernelId !== this.kernelId || notebookName !== this.notebookName;
    this.kernelId = kernelId;
    this.notebookName = notebookName;
    if (changed) {
      this.render();
    }
  }

  protected onAfterShow(): void {
    this.render();
  }

  private run(id: string, args: Record<string, string> = {}): void {
    void this.commands.execute(id, { ...args, ...(this.kernelId ? { kernelId: this.kernelId } : {}) });
  }

  private button(label: string, command: string, args: Record<string, string>, cls: string, disabled: boolean): HTMLButtonElement {
    const b = h('button', { class: `jp-JusnapPanel-button ${cls}`, type: 'button', title: label, disabled }, label);
    b.addEventListener('click', () => this.run(command, args));
    return b;
  }

  private render(): void {
    const node = this.node;
    node.replaceChildren();
    const state = this.kernelId ? this.store.state(this.kernelId) : null;
    const busy = Boolean(state?.busy);
    node.classList.toggle('jp-mod-busy', busy);
    node.setAttribute('aria-busy', String(busy || Boolean(state?.loading)));

    node.append(
      h(
        'header',
        { class: 'jp-JusnapPanel-header' },
        h('h2', { class: 'jp-JusnapPanel-title' }, 'Snapshots'),
        h('div', { class: 'jp-JusnapPanel-notebook', title: this.notebookName }, this.notebookName || 'No notebook')
      )
    );
    if (!state) {
      node.append(h('p', { class: 'jp-JusnapPanel-empty' }, 'Open a notebook with a running kernel to see its snapshots.'));
      return;
    }
    node.append(...this.lineage(state), this.toolbar(state, busy), this.status(state), ...this.alerts(state));
    if (state.snapshots.length) {
      const list = h('ul', { class: 'jp-JusnapPanel-list', role: 'list' });
      const now = nowSeconds();
      for (const s of state.snapshots) {
        list.append(this.item(s, now, state.fresh.has(s.id), busy));
      }
      node.append(list);
    } else if (state.loadedAt !== null && !state.error) {
      node.append(h('p', { class: 'jp-JusnapPanel-empty' }, 'No snapshots yet.'));
    }
  }

  /** "Forked from …" for a kernel that is a fork of a snapshot. */
  private lineage(state: IKernelState): HTMLElement[] {
    const text = forkedFrom(state.kernel, state.parent);
    if (!text) {
      return [];
    }
    const title = state.parent ? localTime(state.parent.created_at) : `snapshot ${state.kernel?.parent_snapshot_id}`;
    return [h('div', { class: 'jp-JusnapPanel-lineage', title }, text)];
  }

  private toolbar(state: IKernelState, busy: boolean): HTMLElement {
    const managed = state.kernel !== null;
    const auto = state.auto;
    const toggle = h('input', {
      type: 'checkbox',
      class: 'jp-JusnapPanel-autoToggle',
      disabled: !managed || busy
    });
    toggle.checked = Boolean(auto?.enabled);
    toggle.addEventListener('change', () => this.run(CommandIds.toggleAuto));
    const cooldown = auto ? ` (${cooldownText(auto.cooldown)})` : '';
    return h(
      'div',
      { class: 'jp-JusnapPanel-toolbar' },
      this.button('Snapshot', CommandIds.create, {}, 'jp-mod-accept jp-JusnapPanel-create', !managed || busy),
      this.button('Refresh', CommandIds.refresh, {}, 'jp-JusnapPanel-refresh', false),
      this.button('Clear all', CommandIds.clear, {}, 'jp-mod-warn jp-JusnapPanel-clear', !managed || busy || !state.snapshots.length),
      h('label', { class: 'jp-JusnapPanel-auto', title: 'Take a snapshot after every executed cell' }, toggle, ` Auto-snapshot${cooldown}`)
    );
  }

  private status(state: IKernelState): HTMLElement {
    if (state.busy) {
      return h(
        'div',
        { class: 'jp-JusnapPanel-status jp-JusnapPanel-busy', role: 'status' },
        h('span', { class: 'jp-JusnapPanel-spinner', 'aria-hidden': 'true' }),
        BUSY_TEXT[state.busy] ?? 'Working…'
      );
    }
    if (state.error) {
      const text = state.error.isNotManaged
        ? 'This notebook’s kernel is not managed by Jusnap: choose a Jusnap kernel to take snapshots.'
        : describe(state.error);
      return h('div', { class: 'jp-JusnapPanel-status jp-JusnapPanel-error', role: 'alert' }, text);
    }
    if (state.loading && state.loadedAt === null) {
      return h('div', { class: 'jp-JusnapPanel-status', role: 'status' }, 'Loading…');
    }
    const n = state.snapshots.length;
    const total = state.snapshots.reduce((sum, s) => sum + s.size_bytes, 0);
    return h(
      'div',
      { class: 'jp-JusnapPanel-status', role: 'status' },
      `${n} snapshot${n === 1 ? '' : 's'}${n ? ` · ${formatBytes(total)}` : ''}`
    );
  }

  /** What the user must know beyond the list: the newest state is not saved (an automatic
   * snapshot failed, or one is still due), or the daemon acted on the kernel by itself. */
  private alerts(state: IKernelState): HTMLElement[] {
    const out: HTMLElement[] = [];
    const notice = state.kernel?.notice;
    if (notice) {
      out.push(h('div', { class: 'jp-JusnapPanel-notice', role: 'alert' }, notice));
    }
    const auto = state.auto;
    if (auto?.last_error) {
      out.push(
        h(
          'div',
          { class: 'jp-JusnapPanel-autoError', role: 'alert' },
          `Automatic snapshot failed: ${auto.last_error}. The newest state is not saved.`
        )
      );
    } else if (auto?.pending_at) {
      out.push(
        h(
          'div',
          { class: 'jp-JusnapPanel-pending', role: 'status' },
          'The newest state is not saved yet: an automatic snapshot follows shortly.'
        )
      );
    }
    return out;
  }

  private item(s: ISnapshot, now: number, fresh: boolean, busy: boolean): HTMLElement {
    const exec = s.execution_count !== null && s.execution_count !== undefined ? `[${s.execution_count}]` : '[ ]';
    return h(
      'li',
      {
        class: `jp-JusnapPanel-item jp-JusnapPanel-trigger-${s.trigger}${fresh ? ' jp-mod-fresh' : ''}`,
        'data-snapshot-id': s.id,
        'data-trigger': s.trigger
      },
      h(
        'div',
        { class: 'jp-JusnapPanel-itemHead' },
        h('span', { class: `jp-JusnapPanel-label${s.label ? '' : ' jp-mod-unlabelled'}` }, s.label || 'unlabelled'),
        h('span', { class: 'jp-JusnapPanel-badge', title: 'what took this snapshot' }, triggerLabel(s.trigger))
      ),
      h(
        'div',
        { class: 'jp-JusnapPanel-meta' },
        h('span', { class: 'jp-JusnapPanel-relative', title: localTime(s.created_at) }, relativeTime(s.created_at, now)),
        ' · ',
        h('time', { class: 'jp-JusnapPanel-local', datetime: new Date(s.created_at * 1000).toISOString() }, localTime(s.created_at))
      ),
      h(
        'div',
        { class: 'jp-JusnapPanel-meta' },
        h('span', { class: 'jp-JusnapPanel-exec', title: 'execution count when taken' }, exec),
        ' · ',
        h('span', { class: 'jp-JusnapPanel-size', title: 'image size' }, formatBytes(s.size_bytes)),
        ' · ',
        h('span', { class: 'jp-JusnapPanel-frozen', title: 'how long the kernel was frozen' }, `frozen ${formatDuration(s.frozen_seconds)}`)
      ),
      h(
        'div',
        { class: 'jp-JusnapPanel-actions' },
        this.button('Restore', CommandIds.restore, { id: s.id }, 'jp-mod-accept jp-JusnapPanel-restore', busy),
        this.button('Open as new notebook', CommandIds.fork, { id: s.id }, 'jp-JusnapPanel-fork', busy),
        this.button('Relabel', CommandIds.relabel, { id: s.id }, 'jp-JusnapPanel-relabel', busy),
        this.button('Delete', CommandIds.remove, { id: s.id }, 'jp-mod-warn jp-JusnapPanel-delete', busy)
      )
    );
  }
}
