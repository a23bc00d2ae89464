import { defineConfig } from 'vitest/config';

// Two projects: unit/integration tests (real servers on port 0, real SQLite, real TLS) run in
// parallel; lab tests (network namespaces, QEMU guests) run one file at a time because they share
// the kernel's network stack and the machine's two cores.
export default defineConfig({
  test: {
    projects: [
      {
        test: {
          name: 'unit',
          include: ['test/unit/**/*.test.ts'],
          testTimeout: 30_000,
          hookTimeout: 30_000,
        },
      },
      {
        test: {
          name: 'lab',
          include: ['test/lab/**/*.test.ts'],
          fileParallelism: false,
          testTimeout: 600_000,
          hookTimeout: 300_000,
        },
      },
    ],
  },
});
