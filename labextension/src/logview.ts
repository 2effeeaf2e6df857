/**
 * "<title> log": a main-area widget showing an instance's log, polled about
 * once a second (`log?since=next`) while the widget is open and visible.
 */
import { MainAreaWidget } from '@jupyterlab/apputils';
import { listIcon } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

import { ApiError, IInstance, log } from './api';
import { instanceKey, instanceLabel } from './manager';

const POLL_MS = 1000;
/** Lines kept in the page; older ones are dropped. */
const MAX_LINES = 5000;

export class LogView extends Widget {
  constructor(private readonly _instance: IInstance) {
    super();
    this.addClass('hpc-proxies-log');
    this.node.dataset.hpcLog = instanceKey(_instance);
    this._problem = document.createElement('div');
    this._problem.className = 'hpc-proxies-log-problem';
    this._status = document.createElement('div');
    this._status.className = 'hpc-proxies-log-status';
    this._pre = document.createElement('pre');
    this._pre.className = 'hpc-proxies-log-lines';
    this.node.append(this._problem, this._status, this._pre);
    this.setProblem(_instance);
    void this._poll();
    this._timer = window.setInterval(() => void this._poll(), POLL_MS);
  }

  /** Show the failed app's problem at the top (or nothing). */
  setProblem(instance: IInstance): void {
    const problem = instance.problem;
    this._problem.replaceChildren();
    this._problem.hidden = !problem;
    if (problem) {
      const title = document.createElement('strong');
      title.textContent = problem.title;
      const summary = document.createElement('div');
      summary.textContent = problem.summary;
      this._problem.append(title, summary);
    }
  }

  dispose(): void {
    window.clearInterval(this._timer);
    super.dispose();
  }

  private async _poll(): Promise<void> {
    if (this._busy || this.isDisposed || (this.isAttached && !this.isVisible)) {
      return;
    }
    this._busy = true;
    try {
      const { app, instance } = this._instance;
      const data = await log(app, instance, this._next);
      delete this._status.dataset.error;
      this._status.textContent =
        this._count || data.lines.length ? '' : 'No output yet.';
      if (this.isDisposed || !data.lines.length) {
        this._next = data.next ?? this._next;
        return;
      }
      const pre = this._pre;
      const atBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 30;
      const text = data.lines.map(l => l.text.replace(/\n$/, '') + '\n').join('');
      pre.append(document.createTextNode(text));
      this._count += data.lines.length;
      while (this._count > MAX_LINES && pre.firstChild) {
        this._count -= (pre.firstChild.textContent ?? '').split('\n').length - 1;
        pre.firstChild.remove();
      }
      this._next = data.next;
      if (atBottom || this._first) {
        pre.scrollTop = pre.scrollHeight;
      }
      this._first = false;
    } catch (error) {
      const message = error instanceof ApiError ? error.message : String(error);
      this._status.dataset.error = '';
      this._status.textContent = `Could not read the log: ${message}`;
    } finally {
      this._busy = false;
    }
  }

  private _problem: HTMLDivElement;
  private _status: HTMLDivElement;
  private _pre: HTMLPreElement;
  private _next = 0;
  private _count = 0;
  private _first = true;
  private _busy = false;
  private _timer: number;
}

export function createLogWidget(instance: IInstance): MainAreaWidget<LogView> {
  const content = new LogView(instance);
  const widget = new MainAreaWidget({ content });
  widget.id = `hpc-proxies-log-${instanceKey(instance).replace(/[^A-Za-z0-9_-]/g, '_')}`;
  widget.title.label = `${instanceLabel(instance)} log`;
  widget.title.closable = true;
  widget.title.icon = listIcon;
  widget.addClass('hpc-proxies-log-panel');
  return widget;
}
