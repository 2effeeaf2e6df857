/**
 * hpc-proxies in JupyterLab 4 and Notebook 7: the apps' instances in the
 * Running panel (IRunningSessionManagers, which Notebook 7's "Running" tab
 * shares), a log view per instance, and launcher items for new instances of
 * the apps that allow more than one (ILauncher is optional: Notebook 7 has none).
 */
import {
  ILabShell,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import {
  Dialog,
  MainAreaWidget,
  showDialog,
  showErrorMessage,
  WidgetTracker
} from '@jupyterlab/apputils';
import { ILauncher } from '@jupyterlab/launcher';
import { IRunningSessionManagers } from '@jupyterlab/running';
import { launchIcon } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

import * as api from './api';
import { iconClass, installLauncherIcons } from './launchericons';
import { createLogWidget, LogView } from './logview';
import { AppsManager, IActions, instanceKey, instanceLabel } from './manager';

const PLUGIN_ID = 'hpc-proxies-labextension:plugin';
const POLL_MS = 2000;
const MISSING_POLL_EVERY = 30;

export namespace CommandIDs {
  export const open = 'hpc-proxies:open';
  export const stop = 'hpc-proxies:stop';
  export const restart = 'hpc-proxies:restart';
  export const showLog = 'hpc-proxies:show-log';
  export const stopAll = 'hpc-proxies:stop-all';
  export const newInstance = 'hpc-proxies:new-instance';
  export const refresh = 'hpc-proxies:refresh';
}

/** Tell the user, in a dialog, why an action failed. */
function report(title: string, error: unknown): void {
  const message = error instanceof Error ? error.message : String(error);
  void showErrorMessage(title, message);
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'hpc-proxies apps in the Running panel, with their logs and new instances.',
  autoStart: true,
  requires: [IRunningSessionManagers],
  optional: [ILauncher, ILabShell],
  activate: (
    app: JupyterFrontEnd,
    managers: IRunningSessionManagers,
    launcher: ILauncher | null,
    labShell: ILabShell | null
  ) => {
    const tracker = new WidgetTracker<MainAreaWidget<LogView>>({
      namespace: 'hpc-proxies-log'
    });
    let apiMissing = false;
    let refreshing: Promise<void> | null = null;
    let again = false;

    /** Fetch the list now; concurrent calls share a fetch and queue one more. */
    const refresh = (): Promise<void> => {
      if (refreshing) {
        again = true;
        return refreshing;
      }
      refreshing = (async () => {
        do {
          again = false;
          try {
            manager.update(await api.list());
            apiMissing = false;
          } catch (error) {
            if (error instanceof api.ApiError && error.status === 404) {
              if (!apiMissing) {
                console.warn(
                  'hpc-proxies: the REST API (hpc-proxies/api/instances) is not there; ' +
                    'is the hpc_proxies server extension enabled? The Apps section stays empty.'
                );
              }
              apiMissing = true;
              manager.update(null);
            } else {
              // A passing network or server hiccup: keep the last list, poll on.
              console.debug('hpc-proxies: could not list the apps:', error);
            }
          }
        } while (again);
      })().finally(() => {
        refreshing = null;
      });
      return refreshing;
    };

    const find = (args: any): api.IInstance | undefined =>
      manager.listing?.instances.find(
        i => i.app === args.app && i.instance === (args.instance ?? 'default')
      );

    const actions: IActions = {
      open: i => {
        window.open(i.url, '_blank');
        // Opening the URL starts a stopped instance: show it starting soon.
        window.setTimeout(() => void refresh(), 1000);
      },
      stop: async i => {
        try {
          await api.stop(i.app, i.instance);
        } catch (error) {
          report(`Could not stop ${instanceLabel(i)}`, error);
        }
        await refresh();
      },
      restart: async i => {
        try {
          await api.restart(i.app, i.instance);
        } catch (error) {
          report(`Could not restart ${instanceLabel(i)}`, error);
        }
        await refresh();
      },
      showLog: i => {
        const id = instanceKey(i);
        const existing = tracker.find(w => w.content.node.dataset.hpcLog === id);
        if (existing) {
          existing.content.setProblem(i);
          app.shell.activateById(existing.id);
          return;
        }
        if (!labShell) {
          // Notebook 7's tree page has no main area for documents: a dialog then.
          const content = new LogView(i);
          content.addClass('hpc-proxies-log-dialog');
          void showDialog({
            title: `${instanceLabel(i)} log`,
            body: content,
            buttons: [Dialog.okButton({ label: 'Close' })]
          }).finally(() => content.dispose());
          return;
        }
        const widget = createLogWidget(i);
        void tracker.add(widget);
        app.shell.add(widget, 'main');
        app.shell.activateById(widget.id);
      },
      stopAll: async () => {
        try {
          await api.stopAll();
        } catch (error) {
          report('Could not stop the apps', error);
        }
        await refresh();
      },
      refresh
    };

    const manager = new AppsManager(actions, launchIcon);
    // The first list before the section is made: it caches its first items.
    const firstRefresh = refresh();
    void firstRefresh.then(() => managers.add(manager));

    const { commands } = app;
    const instanceArgs = {
      type: 'object' as const,
      properties: {
        app: { type: 'string' as const, description: 'The app, e.g. xpra' },
        instance: { type: 'string' as const, description: 'The instance, "default" if not given' }
      },
      required: ['app']
    };
    const withInstance =
      (run: (i: api.IInstance) => unknown) =>
      async (args: any): Promise<void> => {
        let instance = find(args);
        if (!instance) {
          await refresh();
          instance = find(args);
        }
        if (!instance) {
          report('No such app instance', `${args.app}/${args.instance ?? 'default'} is not in the list.`);
          return;
        }
        await run(instance);
      };
    // The commands that act on one instance, named by its app and instance.
    const perInstance: [string, string, (instance: api.IInstance) => unknown][] = [
      [CommandIDs.open, 'Open App Instance', actions.open],
      [CommandIDs.stop, 'Stop App Instance', actions.stop],
      [CommandIDs.restart, 'Restart App Instance', actions.restart],
      [CommandIDs.showLog, 'Show App Instance Log', actions.showLog]
    ];
    for (const [id, label, action] of perInstance) {
      commands.addCommand(id, {
        label,
        describedBy: { args: instanceArgs },
        execute: withInstance(action)
      });
    }
    commands.addCommand(CommandIDs.stopAll, {
      label: 'Stop All hpc-proxies Apps',
      execute: () => actions.stopAll()
    });
    commands.addCommand(CommandIDs.refresh, {
      label: 'Refresh hpc-proxies Apps',
      execute: () => refresh()
    });

    /**
     * New instance of an app: create it, then open its URL (which starts it) in
     * a new tab. The POST answers at once (nothing starts before the URL is
     * opened), well within the browsers' few seconds of user activation after
     * the click; should a popup blocker still stop the tab, a dialog offers the link.
     */
    commands.addCommand(CommandIDs.newInstance, {
      label: args =>
        `New ${manager.apps.find(a => a.name === args.app)?.title ?? args.app} instance`,
      caption: args => `Start one more instance of ${args.app}, in a new tab`,
      iconClass: args => (args.isLauncher ? iconClass(String(args.app)) : ''),
      describedBy: { args: instanceArgs },
      execute: async (args: any) => {
        const title = manager.apps.find(a => a.name === args.app)?.title ?? args.app;
        try {
          const created = await api.create(String(args.app), args.instance || undefined);
          if (!window.open(created.url, '_blank')) {
            const link = document.createElement('a');
            link.href = created.url;
            link.target = '_blank';
            link.textContent = `Open ${instanceLabel(created)}`;
            void showDialog({
              title: `New ${title} instance`,
              body: new Widget({ node: link }),
              buttons: [Dialog.okButton()]
            });
          }
        } catch (error) {
          report(`Could not start a new ${title} instance`, error);
        }
        await refresh();
      }
    });

    // Launcher items, once the list of apps is known (and again if it changes).
    if (launcher) {
      let added = '';
      const disposables: { dispose(): void }[] = [];
      const entriesPromise = api.launcherEntries();
      const addLauncherItems = async () => {
        const apps = manager.apps.filter(a => a.enabled && a.max_instances > 1);
        const key = JSON.stringify(apps.map(a => [a.name, a.title, a.category]));
        if (key === added) {
          return;
        }
        added = key;
        const entries = await entriesPromise;
        installLauncherIcons(
          entries,
          manager.apps.map(a => a.name)
        );
        disposables.splice(0).forEach(d => d.dispose());
        apps.forEach((a, rank) => {
          disposables.push(
            launcher.add({
              command: CommandIDs.newInstance,
              args: { app: a.name, isLauncher: true },
              // Beside the app's own tile, in hpc-proxies' row of the launcher.
              category: a.category || 'HPC apps',
              rank: 100 + rank,
              kernelIconUrl: entries.get(a.name)?.icon_url,
              metadata: { 'hpc-proxies': a.name }
            })
          );
        });
      };
      manager.runningChanged.connect(() => void addLauncherItems());
      void firstRefresh.then(addLauncherItems);
    }

    // Poll while the page is visible; right away when it becomes visible again.
    // Without the API (404: server extension off) only once a minute, so as not
    // to fill the browser's console with failed requests.
    let polls = 0;
    window.setInterval(() => {
      polls++;
      if (apiMissing && polls % MISSING_POLL_EVERY) {
        return;
      }
      if (document.visibilityState === 'visible') {
        void refresh();
      }
    }, POLL_MS);
    document.addEventListener('visibilitychange', () => {
      if (document.visibilityState === 'visible') {
        void refresh();
      }
    });
  }
};

export default plugin;
