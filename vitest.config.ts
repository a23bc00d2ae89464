import { defineConfig } from 'vitest/config';

// Three projects (docs/contributing.md#test-suites):
// - unit: pure code (machines, reducers, parsers, the QEMU driver against a double of QMP with a
//   manual clock); no servers, no processes; seconds.
// - integration: real processes and servers on loopback (port 0, real SQLite, real TLS), in
//   parallel.
// - lab: network namespaces and QEMU guests, one file at a time because they share the kernel's
//   network stack and the machine's two cores; `npm test` runs it after the other two, alone.
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
          name: 'integration',
          include: ['test/integration/**/*.test.ts'],
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
