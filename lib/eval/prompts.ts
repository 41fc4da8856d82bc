/**
 * The default prompt set of `evaluate()` / `idforge eval`: 20 prompts in the spirit of the
 * DreamIdentity and SeFi-IDE figures — scenes, actions with objects, facial attributes (age,
 * expression, accessories) and styles. `<id>` is the identity; for the CLIP text (and for runs
 * without an identity) it reads as SUBJECT_TEXT.
 */
export const DEFAULT_PROMPTS: readonly string[] = Object.freeze([
  // scenes
  'a photo of <id> on the beach at sunset',
  'a photo of <id> in front of the Eiffel Tower',
  'a photo of <id> walking in a snowy forest',
  'a photo of <id> in a busy city street at night',
  'a photo of <id> as an astronaut on the moon',
  // actions with objects
  'a photo of <id> playing the guitar',
  'a photo of <id> reading a book in a library',
  'a photo of <id> drinking a cup of coffee',
  'a photo of <id> riding a bicycle',
  'a photo of <id> cooking in a kitchen',
  // facial attributes
  'a close-up photo of <id> smiling',
  'a close-up photo of <id> looking angry',
  'a photo of <id> with grey hair and wrinkles, old age',
  'a photo of <id> as a child',
  'a photo of <id> wearing sunglasses and a hat',
  // styles
  'an oil painting of <id>',
  'a pencil sketch of <id>',
  'a watercolor painting of <id>',
  '<id> as a Pixar character, 3d render',
  'a pop art portrait of <id>, Andy Warhol style',
]);

/** What `<id>` reads as in the CLIP text and in prompts generated without an identity. */
export const SUBJECT_TEXT = 'a person';

/** The prompt with every `<id>` read as SUBJECT_TEXT. */
export function plainPrompt(prompt: string): string {
  return prompt.replace(/<id>/g, SUBJECT_TEXT);
}
