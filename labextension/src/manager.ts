/**
 * The "Apps (hpc-proxies)" section of JupyterLab's Running panel.
 *
 * The running panel's item API (IRunningSessions.IRunningItem) has one icon, a
 * label, an optional detail column and one shutdown button per row. A row here
 * needs four visible controls (Open, Stop, Restart, Show log), so `label()`
 * returns a React node holding the title, a status line and a row of buttons.
 * That keeps the section a plain IRunningSessions.IManager, so it works wherever
 * the running managers are shown: JupyterLab's Running sidebar, Notebook 7's
 * "Running" tab and the "search tabs and running sessions" dialog. The buttons
 * stop their click events so the row's own `open` (clicking the label) does not
 * fire as well.
 *
 * Two constraints of the panel shape the nodes: the dialog's text filter walks
 * `props.children` of the label's elements and calls `.map` on it, so every
 * element here gets its children as an array (see `h`); and the list re-renders
 * only on `runningChanged`, which is emitted when the text shown would change.
 */
import { IRunningSessions } from '@jupyterlab/running';
import { LabIcon, launchIcon } from '@jupyterlab/ui-components';
import { ISignal, Signal } from '@lumino/signaling';
import * as React from 'react';

import { IApp, IInstance, IJob, IListing } from './api';
import { bytes, duration } from './format';

/** What the section does to an instance; the plugin runs them as commands. */
export interface IActions {
  open(instance: IInstance): void;
  stop(instance: IInstance): Promise<void>;
  restart(instance: IInstance): Promise<void>;
  showLog(instance: IInstance): void;
  stopAll(): Promise<void>;
  refresh(): Promise<void>;
}

/** `React.createElement` whose children are always an array (see above). */
function h(
  tag: string,
  props: Record<string, unknown>,
  children: React.ReactNode[] = []
): React.ReactElement {
  const keyed = children.map((child, i) =>
    React.isValidElement(child) && child.key === null
      ? React.cloneElement(child, { key: i })
      : child
  );
  return React.createElement(tag, { ...props, children: keyed });
}

/** `xpra/default`: the stable id of an instance in the DOM and in commands. */
export function instanceKey(i: { app: string; instance: string }): string {
  return `${i.app}/${i.instance}`;
}

/** "Xpra Desktop" or "Xpra Desktop (exp-a)". */
export function instanceLabel(i: IInstance): string {
  return i.instance === 'default' ? i.title : `${i.title} (${i.instance})`;
}

/** The status line of a row: state, uptime, memory, problem or last exit. */
export function statusText(i: IInstance): string {
  const parts: string[] = [i.state];
  if (i.state === 'running' || i.state === 'starting') {
    if (i.uptime !== null && i.uptime !== undefined) {
      parts.push(`up ${duration(i.uptime)}`);
    }
    if (i.memory !== null && i.memory !== undefined) {
      parts.push(bytes(i.memory));
    }
    if (i.connections > 0) {
      parts.push(i.connections === 1 ? '1 connection' : `${i.connections} connections`);
    }
  }
  if (i.state === 'stopped' && !i.last_exit && !i.started) {
    return 'not started';
  }
  if (i.state === 'failed' && i.problem) {
    parts.push(i.problem.title);
  } else if (i.state === 'stopped' && i.last_exit) {
    // The description already starts with the reason ("stopped: idle for 5 min").
    return i.last_exit.description || `stopped (${i.last_exit.reason})`;
  }
  return parts.join(' · ');
}

export function jobText(job: IJob): string {
  if (job.remaining === null || job.remaining === undefined) {
    return `Slurm job ${job.id}`;
  }
  return `Slurm job ${job.id}: ${duration(job.remaining)} left`;
}

const ACTIONS: { action: string; label: string; title: (i: IInstance) => string }[] = [
  { action: 'open', label: 'Open', title: i => `Open ${instanceLabel(i)} in a new tab` },
  { action: 'stop', label: 'Stop', title: i => `Stop ${instanceLabel(i)}` },
  { action: 'restart', label: 'Restart', title: i => `Restart ${instanceLabel(i)}` },
  { action: 'log', label: 'Show log', title: i => `Show the log of ${instanceLabel(i)}` }
];

export class AppsManager implements IRunningSessions.IManager {
  readonly name = 'Apps (hpc-proxies)';
  readonly shutdownLabel = 'Stop';
  readonly shutdownAllLabel = 'Stop All';
  readonly supportsMultipleViews = false;

  constructor(
    private readonly _actions: IActions,
    private readonly _icon: LabIcon = launchIcon
  ) {}

  get runningChanged(): ISignal<this, void> {
    return this._runningChanged;
  }

  /** The last listing, or null before the first one (or with no API). */
  get listing(): IListing | null {
    return this._listing;
  }

  get apps(): IApp[] {
    return this._listing?.apps ?? [];
  }

  /**
   * Take a new listing; emit `runningChanged` only if what the section shows
   * changed (uptimes tick every poll, but the text only every second or minute),
   * or if a view missed the last change.
   *
   * The panel's list ignores `runningChanged` while it is hidden, and its first
   * render uses the items cached when the section was made, so a change that
   * lands while the panel is closed (or before it is first shown) can be lost.
   * Each row carries the revision it was rendered from (`data-hpc-rev`); when a
   * rendered row is behind, or no row is rendered though there are some, the
   * signal goes out again (a hidden list drops it at no cost).
   */
  update(listing: IListing | null): void {
    this._listing = listing;
    const fingerprint = JSON.stringify(
      listing
        ? [
            listing.job ? jobText(listing.job) : null,
            listing.instances.map(i => [
              instanceKey(i),
              instanceLabel(i),
              i.url,
              statusText(i),
              i.state
            ])
          ]
        : null
    );
    const changed = fingerprint !== this._fingerprint;
    if (changed) {
      this._fingerprint = fingerprint;
      this._rev++;
    }
    if (changed || this._missed()) {
      this._runningChanged.emit();
    }
  }

  /** Whether a view shows an older revision, or nothing where rows are due. */
  private _missed(): boolean {
    const shown = document.querySelectorAll<HTMLElement>('[data-hpc-rev]');
    const due = (this._listing?.instances.length ?? 0) + (this._listing?.job ? 1 : 0);
    if (!shown.length) {
      return due > 0;
    }
    return Array.from(shown).some(e => e.dataset.hpcRev !== String(this._rev));
  }

  shutdownAllConfirmationText = (): string => {
    const live = (this._listing?.instances ?? []).filter(i => i.state !== 'stopped');
    if (!live.length) {
      return 'Stop every hpc-proxies app? None is running now.';
    }
    return `Stop ${live.map(instanceLabel).join(', ')}? Their windows and unsaved work in them are lost.`;
  };

  shutdownAll(): void {
    void this._actions.stopAll();
  }

  refreshRunning(): void {
    void this._actions.refresh();
  }

  running(_options?: { mode: 'tree' | 'list' }): IRunningSessions.IRunningItem[] {
    const listing = this._listing;
    if (!listing) {
      return [];
    }
    const items: IRunningSessions.IRunningItem[] = [];
    if (listing.job) {
      const text = jobText(listing.job);
      const end = listing.job.end;
      items.push({
        className: 'hpc-proxies-job',
        icon: () => this._icon,
        label: () =>
          h(
            'span',
            {
              'data-hpc-job': listing.job!.id,
              'data-hpc-rev': String(this._rev),
              className: 'hpc-proxies-job-text'
            },
            [text]
          ),
        labelTitle: () => (end ? `${text} (ends ${end})` : text)
      });
    }
    for (const instance of listing.instances) {
      items.push(this._item(instance));
    }
    return items;
  }

  private _item(i: IInstance): IRunningSessions.IRunningItem {
    const actions = this._actions;
    const live = i.state !== 'stopped';
    const status = statusText(i);
    const run: Record<string, () => void> = {
      open: () => actions.open(i),
      stop: () => void actions.stop(i),
      restart: () => void actions.restart(i),
      log: () => actions.showLog(i)
    };
    const buttons = ACTIONS.map(({ action, label, title }) =>
      h(
        'button',
        {
          type: 'button',
          className: `hpc-proxies-action jp-mod-styled hpc-proxies-action-${action}`,
          'data-hpc-action': action,
          title: title(i),
          'aria-label': title(i),
          disabled: action === 'stop' && !live,
          onClick: (event: React.MouseEvent) => {
            event.stopPropagation();
            event.preventDefault();
            run[action]();
          }
        },
        [label]
      )
    );
    return {
      className: `hpc-proxies-item hpc-proxies-state-${i.state}`,
      context: instanceKey(i),
      icon: () => this._icon,
      open: () => actions.open(i),
      // The panel's own shutdown (x) button, beside the explicit Stop button.
      shutdown: live ? () => void actions.stop(i) : undefined,
      labelTitle: () =>
        [instanceLabel(i), status, i.note, i.problem?.summary].filter(Boolean).join('\n'),
      label: () =>
        h(
          'div',
          {
            className: 'hpc-proxies-row',
            'data-hpc-instance': instanceKey(i),
            'data-hpc-state': i.state,
            'data-hpc-rev': String(this._rev)
          },
          [
            h('div', { className: 'hpc-proxies-title' }, [instanceLabel(i)]),
            h('div', { className: 'hpc-proxies-status', 'data-hpc-status': '' }, [status]),
            h('div', { className: 'hpc-proxies-actions' }, buttons)
          ]
        )
    };
  }

  private _listing: IListing | null = null;
  private _fingerprint = '';
  private _rev = 0;
  private _runningChanged = new Signal<this, void>(this);
}
