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
export async function serverIcons(): Promise<Map<string, string>> {
  const icons = new Map<string, string>();
  try {
    const response = await ServerConnection.makeRequest(
      URLExt.join(settings.baseUrl, 'server-proxy/servers-info'),
      {},
      settings
    );
    if (response.ok) {
      const data = await response.json();
      for (const server of data.server_processes ?? []) {
        if (server.name && server.launcher_entry?.icon_url) {
          icons.set(server.name, server.launcher_entry.icon_url);
        }
      }
    }
  } catch {
    // No icons then: the launcher items get the default one.
  }
  return icons;
}
