// The identity layer: the Identity type and file format, prompt placeholders and face preparation
// (the M² ID encoder that makes identities is lib/dreamidentity/).
export { Identity, stageIndex, IDENTITY_FORMAT, IDENTITY_VERSION, type IdentityMethod, type IdentityInit, type IdentityValues, type IdentitySaveOptions, type IdentityExpect } from './identity.js';
export { expandPrompt, SLOT_TEXT, type ExpandOptions, type ExpandedPrompt, type SlotRow } from './placeholders.js';
export {
  prepareFace, decodeFace, estimateSimilarity, applyTransform, warpAffine, faceTemplate, ARCFACE_TEMPLATE_112, NO_LANDMARKS_WARNING,
  type Landmarks, type PrepareFaceOptions, type PreparedFace,
} from './face.js';
