/**
 * bull-board at /admin/queues over every queue of the pipeline (shared/queues.ts QUEUE_NAMES),
 * on the deployment's key prefix. The server's auth hook puts it behind an admin token: its
 * routes carry no `access` and so need admin, which also covers its retry/clean/remove actions.
 */
import { createBullBoard } from '@bull-board/api';
import { BullMQAdapter } from '@bull-board/api/bullMQAdapter';
import { FastifyAdapter } from '@bull-board/fastify';
import type { FastifyInstance } from 'fastify';
import type { Queue } from 'bullmq';
import { makeQueue, QUEUE_NAMES, type QueueContext } from '../../shared/queues.js';

export const BOARD_PATH = '/admin/queues';

/** Registers the board; returns its queues, to be closed with the server. */
export function registerBoard(app: FastifyInstance, queues: QueueContext): Queue[] {
  const opened = QUEUE_NAMES.map((q) => makeQueue(queues, q) as unknown as Queue);
  const serverAdapter = new FastifyAdapter();
  serverAdapter.setBasePath(BOARD_PATH);
  createBullBoard({
    queues: opened.map((q) => new BullMQAdapter(q)),
    serverAdapter,
    options: { uiConfig: { boardTitle: 'deepfeat' } },
  });
  app.register(serverAdapter.registerPlugin(), { prefix: BOARD_PATH });
  return opened;
}
