/**
 * The client side of hpc-proxies' REST API (hpc_proxies/jupyter/api.py), under
 * the Jupyter server's base URL. ServerConnection.makeRequest adds the token or
 * cookie and the XSRF header.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

export type State = 'running' | 'starting' | 'failed' | 'stopped' | 'stopping';

export interface IApp {
  name: string;
  title: string;
  /** The launcher's section of the app's tiles (the site's `category`). */
  category: string;
  url: string;
  max_instances: number;
  idle_timeout: number | null;
  enabled: boolean;
}

export interface ILastExit {
  at: string;
  code: number | null;
  signal: number | null;
  reason: 'stopped' | 'idle' | 'restarted' | 'exited' | 'failed';
  description: string;
}

export interface IProblem {
  title: string;
  summary: string;
}

export interface IInstance {
  app: string;
  instance: string;
  title: string;
  url: string;
  state: State;
  started: string | null;
  uptime: number | null;
  memory: number | null;
  pids: number[];
  connections: number;
  connected: boolean;
  last_activity: string | null;
  idle_timeout: number | null;
  last_exit: ILastExit | null;
  problem: IProblem | null;
  note: string;
}

export interface IJob {
  id: string;
  end: string | null;
  remaining: number | null;
}

export interface IListing {
  apps: IApp[];
  instances: IInstance[];
  job: IJob | null;
}

export interface ILogLine {
  seq: number;
  text: string;
}

export interface ILog {
  lines: ILogLine[];
  next: number;
}

/** A failed request: the HTTP status and the server's `message`. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

const settings = ServerConnection.makeSettings();

function url(...parts: string[]): string {
  return URLExt.join(
    settings.baseUrl,
    'hpc-proxies/api',
    ...parts.map(encodeURIComponent)
  );
}

async function request<T>(
  method: 'GET' | 'POST',
  target: string,
  body?: unknown
): Promise<T> {
  const init: RequestInit = { method };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers = { 'Content-Type': 'application/json' };
  }
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(target, init, settings);
  } catch (error) {
    throw new ApiError(0, `Could not reach the Jupyter server: ${error}`);
  }
  const text = await response.text();
  let data: any = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const message =
      (data && typeof data.message === 'string' && data.message) ||
      `${method} ${target}: ${response.status} ${response.statusText}`;
    throw new ApiError(response.status, message);
  }
  return data as T;
}

export function list(): Promise<IListing> {
  return request('GET', url('instances'));
}

export function create(app: string, instance?: string): Promise<IInstance> {
  const body: { app: string; instance?: string } = { app };
  if (instance) {
    body.instance = instance;
  }
  return request('POST', url('instances'), body);
}

export function stop(app: string, instance: string): Promise<IInstance> {
  return request('POST', url('instances', app, instance, 'stop'));
}

export function restart(app: string, instance: string): Promise<IInstance> {
  return request('POST', url('instances', app, instance, 'restart'));
}

export function stopAll(): Promise<{ stopped: [string, string][] }> {
  return request('POST', url('stop-all'));
}

export function log(app: string, instance: string, since: number): Promise<ILog> {
  return request('GET', `${url('instances', app, instance, 'log')}?since=${since}`);
}

/** jupyter-server-proxy's own list of servers, for the launcher icons. */
/** A jupyter-server-proxy launcher entry, as its servers-info lists it. */
export interface ILauncherEntry {
  title: string;
  icon_url: string;
  category: string;
}

/** Every server's launcher entry (title, icon URL, category), by server name. */
export async function launcherEntries(): Promise<Map<string, ILauncherEntry>> {
  const entries = new Map<string, ILauncherEntry>();
  try {
    const response = await ServerConnection.makeRequest(
      URLExt.join(settings.baseUrl, 'server-proxy/servers-info'),
      {},
      settings
    );
    if (response.ok) {
      const data = await response.json();
      for (const server of data.server_processes ?? []) {
        const entry = server.launcher_entry;
        if (server.name && entry?.icon_url) {
          entries.set(server.name, {
            title: String(entry.title ?? server.name),
            icon_url: String(entry.icon_url),
            category: String(entry.category ?? '')
          });
        }
      }
    }
  } catch {
    // No entries then: the launcher items get no icon.
  }
  return entries;
}

