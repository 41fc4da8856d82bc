// Electron main process: one window, and the engine in a utility process (a Node child that
// Electron manages), so that a long generation never blocks the window or the main process.
// Progress and results travel as messages: utility process → main → renderer.
import { app, BrowserWindow, ipcMain, utilityProcess } from 'electron';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
// The model is the app's (never the renderer's to choose): IDFORGE_MODEL, else the tiny test
// model that ships in the idforge package (random weights: its images are noise).
const model = process.env.IDFORGE_MODEL ?? path.join(here, 'node_modules/idforge/test/fixtures/tiny-sd');

let win;
const engine = utilityProcess.fork(path.join(here, 'engine.mjs'), [], { serviceName: 'idforge-engine', env: { ...process.env, IDFORGE_MODEL: model } });
engine.on('message', (m) => win?.webContents.send('idforge', m));
engine.on('exit', (code) => win?.webContents.send('idforge', { type: 'error', message: `engine process exited (${code})` }));

ipcMain.on('generate', (_e, request) => engine.postMessage({ type: 'generate', request }));

app.whenReady().then(() => {
  win = new BrowserWindow({
    width: 640, height: 720,
    webPreferences: { preload: path.join(here, 'preload.cjs'), contextIsolation: true, sandbox: true },
  });
  win.loadFile(path.join(here, 'index.html'));
});
app.on('window-all-closed', () => {
  engine.kill();
  app.quit();
});
