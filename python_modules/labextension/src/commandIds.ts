/** Command ids, shared by the menu (schema/plugin.json), the panel and the toolbar. */
export const CommandIds = {
  create: 'jusnap:create',
  createLabelled: 'jusnap:create-labelled',
  restore: 'jusnap:restore',
  fork: 'jusnap:fork',
  remove: 'jusnap:delete',
  relabel: 'jusnap:relabel',
  clear: 'jusnap:clear',
  refresh: 'jusnap:refresh',
  toggleAuto: 'jusnap:toggle-auto',
  openPanel: 'jusnap:open-panel'
} as const;
