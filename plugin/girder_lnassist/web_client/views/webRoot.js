// The absolute address of Girder's web root (where #job/ID and /histomics live), from the API root,
// which Girder may give relative to the page ("api/v1" on /histomics).
import {getApiRoot} from '@girder/core/rest';

export default function webRoot() {
    return new URL(getApiRoot(), document.baseURI).href.replace(/\/api\/v1\/?$/, '');
}
