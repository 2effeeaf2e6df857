/**
 * Icons for hpc-proxies' cards in JupyterLab's launcher, in their own category.
 *
 * JupyterLab draws a launcher item's `kernelIconUrl` only in the kernel categories
 * ("Notebook", "Console"); elsewhere it draws its command's icon. jupyter-server-proxy
 * gives its items only a `kernelIconUrl` and its command no icon, so in a category of
 * their own ("HPC apps") its tiles would have none. One style sheet, made from
 * servers-info, puts each app's icon on its tile (a card with that category and
 * title) and on the "New … instance" items (class `hpc-proxies-icon-<app>`).
 */
import { ILauncherEntry } from './api';

const STYLE_ID = 'hpc-proxies-launcher-icons';

/** The class our own launcher items' command gives their icon, for ``app``. */
export function iconClass(app: string): string {
  return `hpc-proxies-launcher-icon hpc-proxies-icon-${app}`;
}

function quoted(text: string): string {
  return '"' + text.replace(/\\/g, '\\\\').replace(/"/g, '\\"') + '"';
}

/** Install (or replace) the style sheet for ``apps`` (our apps' names). */
export function installLauncherIcons(
  entries: Map<string, ILauncherEntry>,
  apps: string[]
): void {
  const rules: string[] = [];
  for (const app of apps) {
    const entry = entries.get(app);
    if (!entry) {
      continue;
    }
    const image = `background: url(${quoted(entry.icon_url)}) center / contain no-repeat;`;
    const card = `.jp-LauncherCard[data-category=${quoted(entry.category)}]`;
    // jupyter-server-proxy's card: its title, with " [↗]" when it opens a new tab.
    const titles = [entry.title, `${entry.title} [↗]`].map(t => `[title=${quoted(t)}]`);
    rules.push(
      titles.map(t => `${card}${t} .jp-LauncherCard-icon`).join(',\n') + ` { ${image} }`
    );
    rules.push(`.hpc-proxies-icon-${app} { ${image} }`);
  }
  let style = document.getElementById(STYLE_ID);
  if (!style) {
    style = document.createElement('style');
    style.id = STYLE_ID;
    document.head.appendChild(style);
  }
  style.textContent = rules.join('\n');
}
