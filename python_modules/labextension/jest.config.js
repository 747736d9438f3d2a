/** Unit tests of the DOM-free logic (client, errors, formatting, diffing, store, settings). */
module.exports = {
  testEnvironment: 'node',
  roots: ['<rootDir>/src'],
  testMatch: ['**/__tests__/**/*.spec.ts'],
  transform: {
    '^.+\\.ts$': [
      'ts-jest',
      {
        tsconfig: {
          module: 'commonjs',
          target: 'ES2022',
          strict: true,
          esModuleInterop: true,
          skipLibCheck: true,
          types: ['jest']
        }
      }
    ]
  },
  collectCoverageFrom: [
    'src/client.ts',
    'src/errors.ts',
    'src/format.ts',
    'src/fork.ts',
    'src/diff.ts',
    'src/store.ts',
    'src/settings.ts',
    'src/watch.ts'
  ]
};
