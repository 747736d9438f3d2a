/**
 * Jusnap's frontend for JupyterLab 4 and Notebook 7: wires the API client, the store, the
 * commands (menu + palette), the sidebar panel and the notebook toolbar item together.
 */

import {
  ILabStatus,
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette, IToolbarWidgetRegistry } from '@jupyterlab/apputils';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { ServerConnection } from '@jupyterlab/services';
import { ISettingRegistry } from '@jupyterlab/settingregistry';

import { apiRoot, FORK_PATH, IHttpResponse, JusnapClient, mountUnder, Requester } from './client';
import { registerCommands } from './commands';
import { Feedback } from './feedback';
import { snapshotIcon } from './icon';
import { SnapshotsPanel } from './panel';
import { IJusnapSettings, readSettings } from './settings';
import { SnapshotStore } from './store';
import { SnapshotToolbarItem } from './toolbar';
import { KernelWatch } from './watch';

const PLUGIN_ID = 'jusnap-labextension:plugin';
/** Refreshes after a cell finished, in ms: the auto-snapshot is taken right after it. */
const AFTER_IDLE = [800, 3000];

function makeClient(app: JupyterFrontEnd, settings: IJusnapSettings): JusnapClient {
  const server = app.serviceManager.serverSettings;
  // makeRequest adds Jupyter's token (if any), the XSRF header and same-origin cookies.
  const request: Requester = (url, init) =>
    ServerConnection.makeRequest(url, init as RequestInit, server) as Promise<IHttpResponse>;
  // The fork is always Jupyter's own (it copies the notebook and starts a Jupyter session),
  // wherever the API itself is configured to be.
  return new JusnapClient(
    request,
    apiRoot(settings.apiBaseUrl || server.baseUrl),
    mountUnder(server.baseUrl, FORK_PATH)
  );
}

async function activate(
  app: JupyterFrontEnd,
  tracker: INotebookTracker,
  registry: ISettingRegistry | null,
  palette: ICommandPalette | null,
  toolbars: IToolbarWidgetRegistry | null,
  status: ILabStatus | null,
  restorer: ILayoutRestorer | null
): Promise<void> {
  let settings = readSettings(null);
  const store = new SnapshotStore(makeClient(app, settings));
  const feedback = new Feedback(() => settings);
  const panel = new SnapshotsPanel(store, app.commands, snapshotIcon);

  registerCommands({
    app,
    tracker,
    store,
    feedback,
    settings: () => settings,
    panelId: panel.id,
    status,
    palette
  });

  app.shell.add(panel, 'right', { rank: 650 });
  restorer?.add(panel, 'jusnap-snapshots');

  toolbars?.addFactory<NotebookPanel>('Notebook', 'jusnap-snapshot', nb =>
    new SnapshotToolbarItem(nb, store, app.commands, snapshotIcon)
  );

  // ---- follow the current notebook and keep its list fresh --------------------------------
  let watch: KernelWatch | null = null;
  let current: NotebookPanel | null = null;
  const refresh = (kernelId: string | null): void => {
    if (kernelId && !store.state(kernelId).error?.isNotManaged) {
      void store.refresh(kernelId).catch(() => undefined);
    }
  };
  const showCurrent = (): void => {
    const kernelId = watch?.kernelId ?? null;
    panel.setKernel(kernelId, current?.title.label ?? '');
    if (kernelId && store.state(kernelId).loadedAt === null) {
      void store.refresh(kernelId).catch(() => undefined);
    }
  };
  const follow = (nb: NotebookPanel | null): void => {
    watch?.dispose();
    watch = null;
    current?.title.changed.disconnect(showCurrent);
    current = nb;
    if (nb) {
      watch = new KernelWatch(nb.sessionContext);
      watch.kernelChanged.connect(showCurrent);
      watch.idle.connect((_, kernelId) => {
        for (const delay of AFTER_IDLE) {
          window.setTimeout(() => refresh(kernelId), delay);
        }
      });
      nb.title.changed.connect(showCurrent);
    }
    showCurrent();
  };
  tracker.currentChanged.connect((_, nb) => follow(nb));
  follow(tracker.currentWidget);

  let poll = 0;
  const schedule = (): void => {
    window.clearTimeout(poll);
    if (settings.refreshInterval > 0) {
      poll = window.setTimeout(() => {
        if (!document.hidden) {
          refresh(watch?.kernelId ?? null);
        }
        schedule();
      }, settings.refreshInterval * 1000);
    }
  };
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden) {
      refresh(watch?.kernelId ?? null);
    }
  });
  schedule();

  // ---- settings ---------------------------------------------------------------------------
  if (registry) {
    try {
      const loaded = await registry.load(PLUGIN_ID);
      const apply = (): void => {
        const before = settings;
        settings = readSettings(loaded.composite as Record<string, unknown>);
        if (settings.apiBaseUrl !== before.apiBaseUrl) {
          store.client = makeClient(app, settings);
          showCurrent();
        }
        if (settings.refreshInterval !== before.refreshInterval) {
          schedule();
        }
      };
      loaded.changed.connect(apply);
      apply();
    } catch (error) {
      console.warn('Jusnap: cannot load settings, using defaults', error);
    }
  }
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'Snapshot and restore whole Jupyter kernels (Jusnap).',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [ISettingRegistry, ICommandPalette, IToolbarWidgetRegistry, ILabStatus, ILayoutRestorer],
  activate
};

export default plugin;
