// Type-aware lint: the rules that catch real bugs in async server code
// (floating promises, misused promises) need the type checker.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

// The modules of src/ and which others each may import: the dependencies
// point one way (docs/architecture.md, "Modules and their tables", draws
// this graph), so the import graph has no cycle. A module is a folder of
// src/ or a file at its top; the composition root (app.ts, main.ts) may
// import anything. Every module may use the small shared helpers.
const SHARED = ['errors', 'text', 'deadline', 'currencies', 'backoff', 'tunables'];
/** @type {Record<string, string[]>} */
const MAY_IMPORT = {
  errors: [],
  text: [],
  deadline: [],
  currencies: [],
  backoff: [],
  tunables: [],
  config: ['orders'], // the money limits' defaults
  observability: [],
  storage: ['observability'],
  cache: ['observability'],
  identity: [],
  messaging: ['storage', 'observability'],
  http: ['storage', 'observability', 'messaging', 'identity'],
  inventory: ['storage'],
  catalog: ['inventory', 'cache', 'http', 'storage'],
  orders: ['catalog', 'inventory', 'http', 'storage', 'observability'],
  payments: ['orders', 'messaging', 'storage', 'observability'],
  // The operators' API and console: it reads and changes the others only through their public functions.
  admin: ['orders', 'payments', 'catalog', 'inventory', 'messaging', 'http', 'identity', 'storage', 'observability'],
};
// The allowed directions must themselves have no cycle, or two modules could
// again import each other through a third: refuse to lint if they do.
(function assertAcyclic() {
  /** @type {Map<string, 'visiting' | 'done'>} */
  const state = new Map();
  /** @param {string} name @param {string[]} path */
  const visit = (name, path) => {
    if (state.get(name) === 'done') return;
    if (state.get(name) === 'visiting') throw new Error(`MAY_IMPORT has a cycle: ${[...path, name].join(' → ')}`);
    state.set(name, 'visiting');
    for (const next of MAY_IMPORT[name] ?? []) visit(next, [...path, name]);
    state.set(name, 'done');
  };
  for (const name of Object.keys(MAY_IMPORT)) visit(name, []);
})();
const TOP_LEVEL_FILES = new Set(['errors', 'text', 'deadline', 'currencies', 'backoff', 'tunables', 'config']);

/**
 * no-restricted-imports for one module: the modules it may not import, and
 * every other module's store.ts (a module's SQL is its own: others call its
 * public functions). Relative specifiers are exact here because every
 * module sits one level below src/.
 * @param {string} name
 */
function moduleBoundaries(name) {
  const up = TOP_LEVEL_FILES.has(name) ? './' : '../';
  const allowed = MAY_IMPORT[name] ?? [];
  const forbidden = Object.keys(MAY_IMPORT).filter(
    (other) => other !== name && !allowed.includes(other) && !SHARED.includes(other),
  );
  return {
    files: TOP_LEVEL_FILES.has(name) ? [`src/${name}.ts`, `src/${name}.spec.ts`] : [`src/${name}/**/*.ts`],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          patterns: [
            ...(forbidden.length > 0
              ? [
                  {
                    group: forbidden.flatMap((other) => [`${up}${other}/*`, `${up}${other}.ts`]),
                    message: `${name} may import only ${[...allowed, ...SHARED].join(', ')} (see MAY_IMPORT in eslint.config.js and docs/architecture.md)`,
                  },
                ]
              : []),
            {
              group: [`${up}*/store.ts`],
              message: "another module's SQL is private: call its public functions instead",
            },
          ],
        },
      ],
    },
  };
}

export default tseslint.config(
  { ignores: ['node_modules/', 'data/', 'bench/results/', 'coverage/'] },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      parserOptions: {
        projectService: { allowDefaultProject: ['eslint.config.js'] },
        tsconfigRootDir: import.meta.dirname,
      },
    },
    rules: {
      // node:test's describe/it return promises the runner itself tracks.
      '@typescript-eslint/no-floating-promises': [
        'error',
        {
          allowForKnownSafeCalls: [
            {
              from: 'package',
              package: 'node:test',
              name: ['describe', 'it', 'test', 'suite', 'before', 'after', 'beforeEach', 'afterEach'],
            },
          ],
        },
      ],
      '@typescript-eslint/no-misused-promises': ['error', { checksVoidReturn: { arguments: false } }],
      '@typescript-eslint/no-unused-vars': [
        'error',
        { argsIgnorePattern: '^_', varsIgnorePattern: '^_', ignoreRestSiblings: true },
      ],
      // Fastify plugins and handlers are async by contract, awaiting or not.
      '@typescript-eslint/require-await': 'off',
      '@typescript-eslint/consistent-type-imports': 'error',
    },
  },
  ...Object.keys(MAY_IMPORT).map(moduleBoundaries),
  {
    // The composition root wires every module, but reads none's SQL.
    files: ['src/app.ts', 'src/main.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          patterns: [
            { group: ['./*/store.ts'], message: "another module's SQL is private: call its public functions instead" },
          ],
        },
      ],
    },
  },
  {
    files: ['test/**', 'bench/**', 'scripts/**', 'src/**/*.spec.ts'],
    // Tests and benchmarks poke at arbitrary JSON answers.
    rules: {
      '@typescript-eslint/no-non-null-assertion': 'off',
      '@typescript-eslint/no-explicit-any': 'off',
      '@typescript-eslint/no-unsafe-member-access': 'off',
      '@typescript-eslint/no-unsafe-assignment': 'off',
      '@typescript-eslint/no-unsafe-argument': 'off',
      '@typescript-eslint/no-unsafe-call': 'off',
      '@typescript-eslint/no-unsafe-return': 'off',
    },
  },
  {
    // The console's browser modules: plain JavaScript the browser runs as it
    // is, outside the TypeScript project, so without the type-aware rules.
    files: ['web/**/*.js'],
    ...tseslint.configs.disableTypeChecked,
    languageOptions: {
      parserOptions: { projectService: false, project: false, program: null },
      sourceType: 'module',
      globals: Object.fromEntries(
        [
          'window',
          'document',
          'location',
          'fetch',
          'sessionStorage',
          'CustomEvent',
          'ResizeObserver',
          'TextDecoderStream',
          'URLSearchParams',
          'Intl',
          'setTimeout',
          'clearTimeout',
          'setInterval',
          'clearInterval',
          'addEventListener',
          'removeEventListener',
          'AbortController',
          'console',
        ].map((name) => [name, 'readonly']),
      ),
    },
  },
);
