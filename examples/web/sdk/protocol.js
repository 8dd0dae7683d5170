const replyMapIsComplete = true;
void replyMapIsComplete;
export {};
