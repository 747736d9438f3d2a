/**
 * The notebook toolbar item: "Snapshot" (one click) and the kernel's auto-snapshot state,
 * which toggles it.
 */

import type { NotebookPanel } from '@jupyterlab/notebook';
import type { LabIcon } from '@jupyterlab/ui-components';
import type { CommandRegistry } from '@lumino/commands';
import { Widget } from '@lumino/widgets';

import { CommandIds } from './commandIds';
import { h } from './dom';
import type { SnapshotStore } from './store';
import { KernelWatch } from './watch';

export class SnapshotToolbarItem extends Widget {
  private readonly watch: KernelWatch;
  private readonly snap: HTMLButtonElement;
  private readonly auto: HTMLButtonElement;

  constructor(
    panel: NotebookPanel,
    private readonly store: SnapshotStore,
    private readonly commands: CommandRegistry,
    icon: LabIcon
  ) {
    super();
    this.addClass('jp-JusnapToolbar');
    this.snap = h(
      'button',
      { class: 'jp-ToolbarButtonComponent jp-Button jp-JusnapToolbar-snapshot', type: 'button', title: 'Take a snapshot of the kernel (Jusnap)' },
      h('span', { class: 'jp-JusnapToolbar-icon' }),
      h('span', { class: 'jp-ToolbarButtonComponent-label' }, 'Snapshot')
    );
    icon.element({ container: this.snap.firstChild as HTMLElement, height: '16px', width: '16px' });
    this.auto = h('button', { class: 'jp-JusnapToolbar-auto', type: 'button' });
    this.node.append(this.snap, this.auto);
    this.snap.addEventListener('click', () => this.exec(CommandIds.create));
    this.auto.addEventListener('click', () => this.exec(CommandIds.toggleAuto));

    this.watch = new KernelWatch(panel.sessionContext);
    this.watch.kernelChanged.connect((_, id) => this.follow(id), this);
    store.changed.connect((_, id) => id === this.watch.kernelId && this.render(), this);
    this.follow(this.watch.kernelId);
  }

  dispose(): void {
    this.watch.dispose();
    super.dispose();
  }

  private exec(command: string): void {
    const kernelId = this.watch.kernelId;
    if (kernelId) {
      void this.commands.execute(command, { kernelId });
    }
  }

  private follow(kernelId: string | null): void {
    if (kernelId && this.store.state(kernelId).loadedAt === null) {
      void this.store.refresh(kernelId).catch(() => undefined);
    }
    this.render();
  }

  private render(): void {
    const id = this.watch.kernelId;
    const state = id ? this.store.state(id) : null;
    const managed = Boolean(state?.kernel);
    const enabled = Boolean(state?.auto?.enabled);
    this.snap.disabled = !managed || Boolean(state?.busy);
    this.auto.disabled = !managed || Boolean(state?.busy);
    this.auto.textContent = managed ? (enabled ? 'auto: on' : 'auto: off') : 'auto: –';
    this.auto.classList.toggle('jp-mod-on', managed && enabled);
    this.auto.setAttribute('aria-pressed', String(managed && enabled));
    this.auto.title = managed
      ? `Automatic snapshots after each cell are ${enabled ? 'on' : 'off'}: click to turn them ${enabled ? 'off' : 'on'}`
      : 'This kernel is not managed by Jusnap';
    this.node.classList.toggle('jp-mod-busy', Boolean(state?.busy));
  }
}
