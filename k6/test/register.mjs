// Maps the k6 modules load.js imports to small stubs, so node can run its logic.
import { register } from 'node:module';

register('./stub-hooks.mjs', import.meta.url);
globalThis.__ENV = { RUN_ID: 'test-run', TXENGINE_ADMIN_TOKEN: 'admin-token', ACCOUNTS: '3' };
