// Error codes of the deployment verbs (`vmtc init`, `vmtc up`, `vmtc enroll-token`; docs/deploy.md).
// A deployment file that does not fit its schema is the common VMTC_CONFIG_INVALID with
// `details.field` naming the field (src/deploy/schema.ts).
import { COMMON_ERRORS, errorFactory, mergeCatalogues, type Catalogue } from '../common/errors.ts';

export const DEPLOY_ERRORS = {
  VMTC_DEPLOY_EXISTS: { status: 409, message: 'the directory already holds a deployment; pass --force to write its configuration again (the keys in its data directories are kept)' },
  VMTC_DEPLOY_SERVICE_EXITED: { status: 500, message: 'a service started from the deployment file exited; its last output is in the details' },
} as const satisfies Catalogue;

export const ALL_DEPLOY_ERRORS = mergeCatalogues(COMMON_ERRORS, DEPLOY_ERRORS);
export const deployError = errorFactory(DEPLOY_ERRORS);
