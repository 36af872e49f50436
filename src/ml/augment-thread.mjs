// The entry of an augment worker thread (src/ml/augment-pool.ts starts it). pipe runs TypeScript
// through tsx, registered in the main thread by bin/pipe.js or `node --import tsx`; on Node 20 a
// worker thread loads its entry module before any such loader applies to it, so a .ts entry fails
// with "Unknown file extension". This plain module registers tsx in the thread first, then runs the
// thread's body from the TypeScript module.
import { register } from 'tsx/esm/api';

register();
const { serveAugmentJobs } = await import('./augment-pool.ts');
serveAugmentJobs();
