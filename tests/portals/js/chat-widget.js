window.chatWidget = {open: false};
