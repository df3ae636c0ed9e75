"""Prose for the bundled pretraining corpus.

PROSE_EN and PROSE_ZH were written for this project. CLASSICAL_ZH holds short passages of classical Chinese
(the Analects, the Dao De Jing, the Three Character Classic and three Tang poems), all in the public domain.
"""

PROSE_EN = [
    "The river runs past the old mill and under the stone bridge. In spring it is full and fast, and the water "
    "is brown with mud from the hills. In summer it grows slow and clear, and children sit on the bank with their "
    "feet in the water. In autumn the leaves float on it like small boats.",
    "A good cup of tea takes a little patience. First the water must boil. Then it should rest for a moment, "
    "because water that is too hot makes the tea bitter. The leaves need three or four minutes. After that, the "
    "tea is ready, and the kitchen smells warm and green.",
    "Computers follow instructions very exactly. If you tell a computer to add two numbers, it adds them. If you "
    "tell it the wrong numbers, it adds those too, and it does not complain. This is why people who write programs "
    "check their work again and again.",
    "The market opens early on Saturday. Farmers bring apples, pears, onions and fresh bread. An old man sells "
    "honey in small glass jars. By noon most of the bread is gone, and the square is loud with voices and music.",
    "Learning a new language is like walking into a dark room. At first you can see nothing. Slowly your eyes get "
    "used to the dark, and you find the table, then the chair, then the door. One day you notice that the light "
    "has been on for a long time.",
    "The library is quiet in the afternoon. Sunlight comes through the tall windows and falls on the long wooden "
    "tables. A student turns a page. Somewhere a clock ticks. It is a good place to think.",
    "Mountains make their own weather. A clear morning can turn into a cold, grey afternoon in less than an hour. "
    "People who walk in the mountains carry a warm coat, some water and a map, even when the sky looks kind.",
    "Bread is made from flour, water, salt and yeast. The yeast eats a little of the flour and breathes out gas, "
    "and the gas makes the dough rise. When the bread is baked, the small holes stay, and that is why good bread "
    "is soft inside.",
    "The sea is never still. Even on a calm day small waves touch the sand and pull back again. At night you can "
    "hear them from the house, a slow sound like breathing.",
    "A small model can learn a surprising amount from a small book. It learns which words often come together, "
    "which sentences end with a question, and how a story usually moves from the beginning to the end.",
    "In the garden the tomatoes are red and the beans are climbing the fence. The cat sleeps in the shade of the "
    "apple tree. Bees move from flower to flower, and the afternoon is warm and slow.",
    "Trains leave the station every twenty minutes. People read, look out of the window, or sleep. The fields go "
    "past, then a village, then a river, then more fields. A train journey is a good time to do nothing.",
    "Snow changes the sound of a city. Cars move slowly, footsteps become soft, and the streets are white and "
    "quiet. Children pull sleds to the park, and their parents walk behind them with cold hands.",
    "Numbers are everywhere. There are seven days in a week, twelve months in a year, and sixty minutes in an "
    "hour. A cat has four legs, a bird has two, and a spider has eight.",
    "The town has one school, one post office, two bakeries and a small museum. The museum has old coins, a "
    "wooden boat and a map of the river from two hundred years ago.",
    "Rain began in the evening and did not stop until morning. The gutters sang all night. When the sun came out, "
    "every leaf was shining and the air smelled of wet earth.",
    "A friend is someone who listens. When you are happy, a friend is happy with you. When you are sad, a friend "
    "sits with you and does not need to say very much.",
    "The old clock in the hall was built by a man who lived in the village long ago. It still keeps good time, "
    "and every hour it strikes, slow and deep, so that the whole house knows the hour.",
]

PROSE_ZH = [
    "小河从老磨坊旁边流过，穿过石桥。春天，河水又满又急，带着山上的泥土。夏天，河水变得又慢又清，孩子们坐在岸边，把脚放进水里。"
    "秋天，落叶漂在水面上，像一只只小船。",
    "泡一杯好茶需要一点耐心。先把水烧开，再让它稍微凉一会儿，因为太烫的水会让茶变苦。茶叶泡三四分钟就好了。这时候，厨房里满是温暖的茶香。",
    "计算机做事非常认真。你让它把两个数加起来，它就加起来。你给它错的数，它也照样加，不会抱怨。所以写程序的人总是一遍又一遍地检查自己的工作。",
    "星期六的集市开得很早。农民们带来苹果、梨、洋葱和新鲜的面包。一位老人用小玻璃瓶卖蜂蜜。到了中午，面包差不多卖完了，广场上到处是说话声和音乐声。",
    "学一门新的语言，就像走进一间黑屋子。一开始什么也看不见。慢慢地，眼睛习惯了黑暗，你找到了桌子，然后是椅子，然后是门。"
    "有一天你发现，灯其实早就亮了。",
    "下午的图书馆很安静。阳光从高高的窗户照进来，落在长长的木桌上。一个学生翻了一页书，远处有一只钟在滴答作响。这是一个适合思考的地方。",
    "山里的天气变得很快。晴朗的早晨，不到一个小时就可能变成阴冷的下午。在山里走路的人，即使天气看起来很好，也会带上厚衣服、水和地图。",
    "面包是用面粉、水、盐和酵母做的。酵母吃掉一点面粉，呼出气体，气体让面团发起来。面包烤好以后，小气孔还留在里面，所以好的面包里面很软。",
    "大海从来不会安静。即使在平静的日子里，小小的波浪也会碰到沙滩，再退回去。晚上在屋子里也能听到海浪声，慢慢的，像呼吸一样。",
    "一个小模型也能从一本小书里学到很多东西。它会知道哪些词常常一起出现，哪些句子是问句，一个故事通常怎样从开头走到结尾。",
    "花园里的西红柿红了，豆角爬上了篱笆。猫在苹果树的阴凉下睡觉。蜜蜂在花丛中飞来飞去，下午又暖和又安静。",
    "火车每二十分钟开出一班。人们看书，看窗外，或者睡觉。窗外是田野，然后是村庄，然后是小河，然后又是田野。坐火车是什么也不做的好时候。",
    "下雪以后，城市的声音变了。汽车开得很慢，脚步声变得很轻，街道又白又安静。孩子们拉着雪橇去公园，大人们跟在后面，手冻得冰凉。",
    "数字到处都有。一个星期有七天，一年有十二个月，一个小时有六十分钟。猫有四条腿，鸟有两条腿，蜘蛛有八条腿。",
    "小镇上有一所学校、一个邮局、两家面包店和一座小博物馆。博物馆里有古老的钱币、一条木船，还有一张两百年前的河流地图。",
    "雨从傍晚开始下，一直下到第二天早上。屋檐下的水流了一整夜。太阳出来的时候，每一片叶子都闪闪发亮，空气里是湿润泥土的味道。",
    "朋友就是愿意听你说话的人。你高兴的时候，朋友和你一起高兴；你难过的时候，朋友陪着你，不需要说很多话。",
    "过年的时候，一家人坐在一起吃饺子。外面放着鞭炮，屋里又热闹又暖和。孩子们穿上新衣服，等着长辈给红包。",
]

CLASSICAL_ZH = [
    "子曰：学而时习之，不亦说乎？有朋自远方来，不亦乐乎？人不知而不愠，不亦君子乎？",
    "子曰：温故而知新，可以为师矣。子曰：学而不思则罔，思而不学则殆。",
    "子曰：三人行，必有我师焉。择其善者而从之，其不善者而改之。",
    "子曰：知之者不如好之者，好之者不如乐之者。子曰：己所不欲，勿施于人。",
    "道可道，非常道。名可名，非常名。无名天地之始；有名万物之母。",
    "上善若水。水善利万物而不争，处众人之所恶，故几于道。",
    "知人者智，自知者明。胜人者有力，自胜者强。知足者富。",
    "合抱之木，生于毫末；九层之台，起于累土；千里之行，始于足下。",
    "人之初，性本善。性相近，习相远。苟不教，性乃迁。",
    "床前明月光，疑是地上霜。举头望明月，低头思故乡。",
    "春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。",
    "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。",
]
