// The window's only access to the engine: send a request, receive progress / image / error messages.
const { contextBridge, ipcRenderer } = require('electron');

contextBridge.exposeInMainWorld('idforge', {
  generate: (request) => ipcRenderer.send('generate', request),
  onMessage: (fn) => ipcRenderer.on('idforge', (_e, m) => fn(m)),
});
